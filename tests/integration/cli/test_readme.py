"""README.md's `bash` and `python` blocks, run in order as a new user would run them, against
a real `cnnserve serve` (the server `make run` starts, on free ports: the README's 8000, 8001
and 8002 are replaced by them). They run from a scratch folder holding `.venv` (a link to
the checkout's), a copy of `models`, and `photos/`: the user's image folder, made here from
crops of three skimage photographs. A block marked `<!-- readme-test: skip: why -->` is
skipped with that reason. `make client` and `make export-deps` lines are not rerun (they
would reinstall the checkout into .venv from the scratch folder): what they install is
checked to be there instead. A comment line that directly follows a command (a print in
Python) is that command's expected output (`...` matches anything)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.serving import EXAMPLE_MODELS, REPO_ROOT

README = REPO_ROOT / "README.md"
FENCE = re.compile(
    r"(?:<!-- readme-test: skip: (?P<skip>.*?)-->\n)?^```(?P<lang>[a-z]*)\n(?P<body>.*?)^```",
    re.DOTALL | re.MULTILINE,
)
DEFAULT_PORTS = {"grpc": "127.0.0.1:8001", "http": "127.0.0.1:8000", "metrics": "127.0.0.1:8002"}
# What each make target in a block installs (make test installed it: the dev extra names the
# client extra, and make test installs the export extra).
MAKE_TARGETS = {"client": ("tritonclient.grpc", "tritonclient.http", "sklearn"),
                "export-deps": ("torch", "sklearn", "matplotlib", "optuna")}  # fmt: skip


@dataclass(frozen=True)
class Block:
    lang: str
    body: str
    line: int
    skip: str | None

    @property
    def label(self) -> str:
        return f"README.md:{self.line}-{self.lang}"


def readme_blocks() -> list[Block]:
    text = README.read_text()
    blocks = []
    for match in FENCE.finditer(text):
        if match["lang"] in ("bash", "python"):
            line = text.count("\n", 0, match.start("body"))
            skip = " ".join(match["skip"].split()) if match["skip"] else None
            blocks.append(Block(match["lang"], match["body"], line, skip))
    return blocks


def expected_outputs(block: Block, body: str) -> list[str]:
    """Comment lines that directly follow a command (in Python, a `print(...)`), or
    another such line."""
    expected, after_command = [], False
    for raw in body.splitlines():
        line = raw.strip()
        if line.startswith("#"):
            if after_command and line not in ("#", "# ..."):
                expected.append(line[1:].strip())
        else:
            after_command = bool(line) and (block.lang == "bash" or "print(" in line)
    return expected


def matches(expected: str, output: str) -> bool:
    """`expected` occurs in `output`, whitespace collapsed, `...` matching anything."""
    parts = " ".join(expected.split()).split("...")
    pattern = ".*?".join(re.escape(part.strip()) for part in parts)
    return re.search(pattern, " ".join(output.split())) is not None


@dataclass(frozen=True)
class Workspace:
    folder: Path
    ports: dict[str, str]
    hints: list[str]  # the commands the server printed after "try:"

    def localized(self, text: str) -> str:
        for kind, default in DEFAULT_PORTS.items():
            text = text.replace(default, self.ports[kind])
        return text


def make_photo_folder(root: Path) -> None:
    """90 photos in 3 classes: crops of mixed sizes, as a user's folder would hold."""
    from skimage import data

    rng = np.random.default_rng(0)
    for name in ("astronaut", "coffee", "chelsea"):
        image = getattr(data, name)()
        folder = root / name
        folder.mkdir(parents=True)
        height, width = image.shape[:2]
        for index in range(30):
            side = int(rng.integers(64, 160))
            top, left = int(rng.integers(0, height - side)), int(rng.integers(0, width - side))
            crop = image[top : top + side, left : left + side]
            Image.fromarray(crop).save(folder / f"{index}.jpg", quality=90)


def start_server(folder: Path) -> tuple[subprocess.Popen[str], dict[str, str], list[str]]:
    process = subprocess.Popen(
        [sys.executable, "-m", "service", "serve", "--model-repository", "models",
         "--port", "0", "--http-port", "0", "--metrics-port", "0"],
        cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    assert process.stdout is not None
    ports: dict[str, str] = {}
    hints: list[str] = []
    for line in process.stdout:
        text = line.strip()
        if text.startswith("cnnserve listening on "):
            ports["grpc"] = text.split()[-1]
        elif text.startswith("KServe v2 REST on "):
            ports["http"] = text.split()[-1].removeprefix("http://")
        elif text.startswith("metrics on "):
            ports["metrics"] = text.split()[-1].removeprefix("http://").removesuffix("/metrics")
        elif text.startswith("try: ") or hints:
            hints.append(text.removeprefix("try: "))
            if len(hints) == 3:  # health, infer, the tritonclient one-liner
                break
    assert len(ports) == 3 and len(hints) == 3, f"server exited ({process.poll()}): {ports}"
    return process, ports, hints


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workspace]:
    folder = tmp_path_factory.mktemp("new-user")
    (folder / ".venv").symlink_to(Path(sys.executable).parent.parent)
    shutil.copytree(EXAMPLE_MODELS, folder / "models")
    make_photo_folder(folder / "photos")
    process, ports, hints = start_server(folder)
    try:
        yield Workspace(folder, ports, hints)
    finally:
        process.terminate()
        process.wait(timeout=60)


def without_make(body: str) -> str:
    """Drop `make <target>` lines after checking that what they install is installed."""
    kept = []
    for line in body.splitlines():
        words = line.split("#")[0].split()
        if words[:1] == ["make"]:
            assert len(words) == 2 and words[1] in MAKE_TARGETS, f"unknown make line: {line}"
            for module in MAKE_TARGETS[words[1]]:
                found = subprocess.run([sys.executable, "-c", f"import {module}"])
                assert found.returncode == 0, f"`{line}` should have installed {module}"
            continue
        kept.append(line)
    return "\n".join(kept) + "\n"


def run_block(block: Block, space: Workspace) -> str:
    body = space.localized(block.body)
    env = {**os.environ, "PYTHONPATH": ""}  # as in a user's shell: nothing of the tests
    if block.lang == "python":
        command = [sys.executable, "-c", body]
    else:
        command = ["bash", "-e", "-o", "pipefail", "-c", without_make(body)]
    result = subprocess.run(
        command, cwd=space.folder, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, (
        f"{block.label} exited {result.returncode}\n{result.stdout}\n{result.stderr}"
    )
    return result.stdout + result.stderr


BLOCKS = readme_blocks()


def test_the_readme_has_blocks_to_run() -> None:
    """A change to the fence format must not make every block vanish from the test."""
    assert sum(1 for block in BLOCKS if block.skip is None) >= 5
    assert all(block.skip for block in BLOCKS if "make run" in block.body)


@pytest.mark.slow
@pytest.mark.parametrize("block", BLOCKS, ids=[block.label for block in BLOCKS])
def test_readme_block(block: Block, workspace: Workspace) -> None:
    if block.skip is not None:
        pytest.skip(block.skip)
    output = run_block(block, workspace)
    for expected in expected_outputs(block, workspace.localized(block.body)):
        assert matches(expected, output), f"{block.label}: {expected!r} not in:\n{output}"


def test_the_servers_hints_run_as_printed(workspace: Workspace) -> None:
    health, _infer, client = workspace.hints
    outputs = []
    for hint in (health, client):
        result = subprocess.run(
            ["bash", "-c", hint], cwd=workspace.folder, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, f"{hint}\n{result.stderr}"
        outputs.append(result.stdout)
    assert "SERVING" in outputs[0]
