"""The model repository on disk: file names, version folders, model names, file stamps.

`<root>/<model>/<version>/model.onnx` with optional `<root>/<model>/config.yaml` (or a
Triton `config.pbtxt`, never both) and `<root>/<model>/labels.txt`. Versions are positive
integers; the highest is served, or the one a config.pbtxt's version_policy selects; its
`default_model_filename` names the file (a folder of that name holds `model.onnx`, as in
Triton). Model names are folder names. Every function here touches the filesystem and
blocks: the event loop calls them through `asyncio.to_thread`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from service.configuration.model_config import ModelOverrides, load_model_overrides
from service.configuration.triton_model_config import CONFIG_PBTXT, read_triton_config
from service.tensors.errors import ConfigError, InvalidArgument, NotFound

MODEL_FILE = "model.onnx"
CONFIG_FILE = "config.yaml"
LABELS_FILE = "labels.txt"
# Model names become folder names: refuse anything that could leave the repository root.
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")

# A version's files as last seen: (path, mtime_ns, size) of its model file and the config.
FileStamp = tuple[tuple[str, int, int], ...]


def valid_model_name(name: str) -> bool:
    return bool(_MODEL_NAME.match(name)) and ".." not in name


def check_model_name(name: str) -> None:
    if not valid_model_name(name):
        raise InvalidArgument(
            f"invalid model name {name!r}: use letters, digits, '_', '.' and '-' "
            "(no path separators, no '..', at most 128 characters)"
        )


def model_folder(root: Path, name: str) -> Path:
    """The folder of model `name` under the (resolved) root; InvalidArgument for a name
    that could leave the root, or a symlink that resolves outside it; NotFound if absent."""
    check_model_name(name)
    path = root / name
    if not path.resolve().is_relative_to(root):
        raise InvalidArgument(f"model '{name}' resolves outside the model repository")
    if not path.is_dir():
        raise NotFound(f"no model folder '{name}' in the model repository {root}")
    return path


def model_folders(root: Path) -> list[str]:
    """The model folders under the root (hidden ones skipped), sorted."""
    return sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))


def read_overrides(model_dir: Path) -> ModelOverrides:
    """The model's config.yaml or config.pbtxt (ConfigError for both, or a bad one)."""
    name, pbtxt = model_dir.name, model_dir / CONFIG_PBTXT
    if pbtxt.is_file():
        if (model_dir / CONFIG_FILE).exists():
            raise ConfigError(
                f"model '{name}': both {CONFIG_FILE} and {CONFIG_PBTXT} are in its folder; keep one"
            )
        return read_triton_config(name, pbtxt.read_text())
    return load_model_overrides(name, model_dir / CONFIG_FILE)


def model_path(model_dir: Path, version: int, model_file: str | None = None) -> Path:
    """The ONNX file of a version: `model_file` (default model.onnx), or model.onnx inside
    a folder of that name."""
    path = model_dir / str(version) / (model_file or MODEL_FILE)
    return path / MODEL_FILE if path.is_dir() else path


def file_stamp(model_dir: Path, version: int, model_file: str | None = None) -> FileStamp:
    stamps = []
    paths = (model_path(model_dir, version, model_file), model_dir / CONFIG_FILE,
             model_dir / CONFIG_PBTXT)  # fmt: skip
    for path in paths:
        try:
            stat = path.stat()
        except FileNotFoundError:
            continue
        stamps.append((str(path), stat.st_mtime_ns, stat.st_size))
    return tuple(stamps)


def discover_versions(model_dir: Path, model_file: str | None = None) -> list[int]:
    versions = []
    for child in model_dir.iterdir():
        numbered = child.is_dir() and child.name.isdigit() and int(child.name) > 0
        if numbered and model_path(model_dir, int(child.name), model_file).is_file():
            versions.append(int(child.name))
    return sorted(versions)


@dataclass(frozen=True)
class Latest:
    """A version of a model folder to serve and the stamp of its files."""

    version: int
    stamp: FileStamp


def latest_on_disk(model_dir: Path) -> Latest | None:
    """The highest version folder holding model.onnx, whatever the config says (what a
    config that cannot be read is recorded against, to retry once the files change)."""
    versions = discover_versions(model_dir)
    return Latest(versions[-1], file_stamp(model_dir, versions[-1])) if versions else None


def selected_versions(model_dir: Path) -> list[Latest]:
    """The versions to serve, oldest first: the highest, or the version_policy's choice
    (ConfigError when the config cannot be read or names versions the folder has not)."""
    triton = read_overrides(model_dir).triton
    model_file = triton.model_file if triton else None
    versions = discover_versions(model_dir, model_file)
    chosen = triton.version_policy.select(versions) if triton else versions[-1:]
    if triton is not None:
        policy = triton.version_policy
        missing = sorted(set(policy.versions) - set(versions))
        if missing:
            raise ConfigError(
                f"model '{model_dir.name}': version_policy specific names version(s) "
                f"{missing}, which its folder has not (it has {versions})"
            )
    return [Latest(version, file_stamp(model_dir, version, model_file)) for version in chosen]


def scan(root: Path) -> dict[str, list[Latest]]:
    """Every validly named model folder with the versions to serve ([]: none yet; a config
    that cannot be read: the highest on disk, whose load then says why)."""
    found: dict[str, list[Latest]] = {}
    for name in model_folders(root):
        if valid_model_name(name):
            try:
                found[name] = selected_versions(root / name)
            except ConfigError:
                fallback = latest_on_disk(root / name)
                found[name] = [fallback] if fallback else []
    return found


def read_labels(model_dir: Path, file_name: str = LABELS_FILE) -> tuple[str, ...]:
    path = model_dir / file_name
    if not path.is_file():
        return ()
    return tuple(line.strip() for line in path.read_text().splitlines() if line.strip())
