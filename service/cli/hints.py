"""The commands that `cnnserve` prints for the user to run next, in the form that works
where it is installed: in a checkout's `.venv` (what `make run` makes) the shell finds no
`cnnserve` until the venv is activated, so a hint says `.venv/bin/cnnserve`; installed on
the PATH (the container image, `pip install`), plain `cnnserve`."""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

import service


def checkout_root() -> Path | None:
    """The source checkout this package runs from (an editable install), if any."""
    root = Path(service.__file__).resolve().parent.parent  # the folder holding service/
    if (root / "Makefile").is_file() and (root / "pyproject.toml").is_file():
        return root
    return None


def command(name: str) -> str:
    """How to type `name` (a console script of this environment, or `python`) from here."""
    installed = Path(sys.executable).parent / name
    if not installed.exists():
        return name
    found = shutil.which(name)
    if found is not None and Path(found).resolve() == installed.resolve():
        return name
    relative = os.path.relpath(installed)
    return relative if not relative.startswith("..") else str(installed)


def install_hint(extra: str, make_target: str) -> str:
    """How to install one of the package's extras: the make target in a checkout."""
    root = checkout_root()
    if root is None:
        return f"pip install 'cnnserve[{extra}]'"
    where = "" if Path.cwd().resolve() == root else f" in {root}"
    return f"make {make_target}{where}"


def has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


class ShowDefaults(argparse.HelpFormatter):
    """`--help` shows each option's default, except where the help text already says it
    or there is none to show (flags, optional values left unset)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        unset = action.default is None or action.default is False or action.default == ""
        if not action.option_strings or unset or action.default is argparse.SUPPRESS:
            return action.help
        if "default" in text:
            return text
        return f"{text} (default: %(default)s)".lstrip()


def try_hint(address: str, ready_models: Sequence[str]) -> str:
    """What `cnnserve serve` prints to try next, in forms that run as printed (README
    "First requests" runs the same ones)."""
    model = ready_models[0] if ready_models else "<model>"
    cnnserve = command("cnnserve")
    lines = [
        f"  try: {cnnserve} health --url {address}",
        f"       {cnnserve} infer --url {address} --model {model} image.png",
    ]
    if has_module("tritonclient"):
        lines.append(
            f'       {command("python")} -c "import tritonclient.grpc as g; '
            f"print(g.InferenceServerClient('{address}').get_server_metadata())\""
        )
    else:
        lines.append(
            f"       tritonclient (Triton's Python client): {install_hint('client', 'client')}"
        )
    return "\n".join(lines)
