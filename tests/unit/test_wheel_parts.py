"""bench/wheel_parts.py: wheels cut into loads that each fit one device call, joined and
checked there; a missing part or a wrong checksum stops the join, naming what is wrong."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from bench.wheel_parts import MIB, SUMS, WheelError, join, main, split


def wheels(folder: Path, sizes: dict[str, int]) -> dict[str, bytes]:
    (folder / "wheels").mkdir(parents=True)
    contents = {}
    for index, (name, size) in enumerate(sizes.items()):
        data = hashlib.sha256(name.encode()).digest() * (size // 32) + bytes([index]) * (size % 32)
        (folder / "wheels" / name).write_bytes(data)
        contents[name] = data
    return contents


def test_loads_fit_and_join_restores_every_wheel(tmp_path: Path) -> None:
    sizes = {"big-1.0-py3-none-any.whl": int(2.6 * MIB), "small-1.0-py3-none-any.whl": 300_000,
             "tiny-1.0-py3-none-any.whl": 1_000}  # fmt: skip
    contents = wheels(tmp_path, sizes)
    loads = split(tmp_path, split_mib=0.5, load_mib=1.0)
    assert len(loads) == 3  # 2.9 MiB in loads of 1 MiB: the fewest calls
    for load in loads:
        pieces = [p for p in load.iterdir() if p.name != SUMS]
        assert sum(p.stat().st_size for p in pieces) <= MIB
        assert (load / SUMS).read_text() == (tmp_path / SUMS).read_text()
    carried = tmp_path / "carried"  # what reaches the device: the loads alone
    for load in loads:
        (carried / load.name).mkdir(parents=True)
        for piece in load.iterdir():
            (carried / load.name / piece.name).write_bytes(piece.read_bytes())
    joined = join(carried, tmp_path / "joined")
    assert {p.name: p.read_bytes() for p in joined} == contents


def test_a_missing_part_is_named(tmp_path: Path) -> None:
    wheels(tmp_path, {"big-1.0-py3-none-any.whl": 3 * MIB})
    loads = split(tmp_path, split_mib=0.5, load_mib=1.0)
    for piece in loads[1].glob("*.part-*"):
        piece.unlink()
    for folder in (tmp_path / "wheels",):
        for wheel in folder.iterdir():
            wheel.unlink()
    with pytest.raises(WheelError, match=r"big-1.0-py3-none-any.whl: parts \[2\] of 3 are missing"):
        join(tmp_path, tmp_path / "joined")


def test_a_corrupted_part_fails_the_checksum_and_the_command_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wheels(tmp_path, {"big-1.0-py3-none-any.whl": 2 * MIB})
    loads = split(tmp_path, split_mib=0.5, load_mib=1.0)
    (tmp_path / "wheels" / "big-1.0-py3-none-any.whl").unlink()
    part = next(loads[0].glob("*.part-*"))
    data = bytearray(part.read_bytes())
    data[100] ^= 0xFF
    part.write_bytes(bytes(data))
    assert main(["join", str(tmp_path), str(tmp_path / "joined")]) == 1
    assert "big-1.0-py3-none-any.whl: sha256" in capsys.readouterr().err


def test_checksum_files_that_disagree_are_refused(tmp_path: Path) -> None:
    wheels(tmp_path, {"a-1.0-py3-none-any.whl": 1000})
    loads = split(tmp_path, split_mib=0.5, load_mib=1.0)
    other = tmp_path / "other"
    other.mkdir()
    (other / SUMS).write_text("0" * 64 + "  a-1.0-py3-none-any.whl\n")
    assert loads
    with pytest.raises(WheelError, match=r"disagree about a-1\.0-py3-none-any\.whl"):
        join(tmp_path, tmp_path / "joined")


def test_a_part_larger_than_a_load_is_refused(tmp_path: Path) -> None:
    wheels(tmp_path, {"a-1.0-py3-none-any.whl": 1000})
    with pytest.raises(WheelError, match="larger than a load"):
        split(tmp_path, split_mib=2.0, load_mib=1.0)
