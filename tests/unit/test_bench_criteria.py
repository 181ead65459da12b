"""The reliability benches exit non-zero when a criterion fails (the benches themselves
take minutes and run outside `make test`; their verdict logic does not)."""

from __future__ import annotations

import pytest

from bench import reliability
from bench.reliability import Outcome


def outcome(passed: bool) -> Outcome:
    return Outcome("fake", "none", "42", "answer is 42", passed)


@pytest.mark.parametrize(("verdicts", "code"), [((True, True), 0), ((True, False), 1)])
def test_main_exits_1_when_any_criterion_fails(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    verdicts: tuple[bool, ...],
    code: int,
) -> None:
    monkeypatch.setattr(reliability, "build_repository", lambda root: [])
    monkeypatch.setattr(
        reliability, "BENCHES", {"fake": lambda root: [outcome(v) for v in verdicts]}
    )
    monkeypatch.setattr("sys.argv", ["bench.reliability", "all"])
    assert reliability.main() == code
    out = capsys.readouterr()
    assert "| fake | none | 42 | answer is 42 |" in out.out  # the criterion beside the figure
    assert ("**FAIL**" in out.out) == (code == 1)


def test_outcome_rows_name_the_verdict() -> None:
    assert outcome(True).row().endswith("| pass |")
    assert outcome(False).row().endswith("| **FAIL** |")
