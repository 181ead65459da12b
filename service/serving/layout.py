"""The model repository on disk: file names, version folders, model names, file stamps.

`<root>/<model>/<version>/model.onnx` with optional `<root>/<model>/config.yaml` and
`<root>/<model>/labels.txt`. Versions are positive integers; the highest is served. Model
names are folder names. Every function here touches the filesystem and blocks: the event
loop calls them through `asyncio.to_thread`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from service.tensors.errors import InvalidArgument, NotFound

MODEL_FILE = "model.onnx"
CONFIG_FILE = "config.yaml"
LABELS_FILE = "labels.txt"
# Model names become folder names: refuse anything that could leave the repository root.
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")

# A version's files as last seen: (path, mtime_ns, size) of model.onnx and config.yaml.
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


def file_stamp(model_dir: Path, version: int) -> FileStamp:
    stamps = []
    for path in (model_dir / str(version) / MODEL_FILE, model_dir / CONFIG_FILE):
        try:
            stat = path.stat()
        except FileNotFoundError:
            continue
        stamps.append((str(path), stat.st_mtime_ns, stat.st_size))
    return tuple(stamps)


def discover_versions(model_dir: Path) -> list[int]:
    versions = []
    for child in model_dir.iterdir():
        numbered = child.is_dir() and child.name.isdigit() and int(child.name) > 0
        if numbered and (child / MODEL_FILE).is_file():
            versions.append(int(child.name))
    return sorted(versions)


@dataclass(frozen=True)
class Latest:
    """The highest version of a model folder and the stamp of its files."""

    version: int
    stamp: FileStamp


def latest_version(model_dir: Path) -> Latest | None:
    versions = discover_versions(model_dir)
    if not versions:
        return None
    return Latest(versions[-1], file_stamp(model_dir, versions[-1]))


def scan(root: Path) -> dict[str, Latest | None]:
    """Every validly named model folder with its latest version (None: no version yet)."""
    return {
        name: latest_version(root / name) for name in model_folders(root) if valid_model_name(name)
    }


def read_labels(model_dir: Path) -> tuple[str, ...]:
    path = model_dir / LABELS_FILE
    if not path.is_file():
        return ()
    return tuple(line.strip() for line in path.read_text().splitlines() if line.strip())
