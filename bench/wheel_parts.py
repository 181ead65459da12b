"""Wheels that travel in pieces: `python3 -m bench.wheel_parts split|join` (stdlib only).

The GPU machine fetches nothing and one call to it carries at most 64 MiB, while the
onnxruntime-gpu wheel alone is 244 MiB. `split` (bench/gpu_wheels.sh runs it) cuts every
wheel over --split-mib into self-describing parts (`NAME.whl.part-03-of-05`), packed with the
small wheels into folders `load-1`, `load-2`, ... of at most --load-mib each (58 MiB: with
the 2 MiB working tree, inside a call's 64), one folder to carry per call. Each load
holds a copy of SHA256SUMS (of the whole wheels).
`join` (bench/gpu.sh --wheels) gathers whole wheels and parts from every folder under the
given one, joins the parts, and checks every wheel named in SHA256SUMS: a missing part or a
wrong checksum stops the run before anything is installed.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import shutil
import sys
from pathlib import Path

MIB = 1024 * 1024
PART = re.compile(r"^(?P<wheel>.+\.whl)\.part-(?P<index>\d+)-of-(?P<count>\d+)$")
SUMS = "SHA256SUMS"
CHUNK = 4 * MIB


class WheelError(Exception):
    """What stops a join: a part missing, a checksum wrong, a wheel absent."""


def sha256(path: Path) -> str:
    with path.open("rb") as source:
        return hashlib.file_digest(source, "sha256").hexdigest()


Load = list[tuple[Path, int, int]]  # (wheel, offset, length) pieces


def _pack(wheels: list[Path], split_bytes: int, load_bytes: int) -> list[Load]:
    """Loads of (wheel, offset, length): the whole small wheels first fit, largest first;
    then each wheel over `split_bytes` poured into the room left and new loads, so every
    load but the last is full and the number of calls is the least."""
    loads: list[Load] = []
    room: list[int] = []
    small = [w for w in wheels if w.stat().st_size <= split_bytes]
    for wheel in sorted(small, key=lambda w: -w.stat().st_size):
        size = wheel.stat().st_size
        for index, left in enumerate(room):
            if size <= left:
                loads[index].append((wheel, 0, size))
                room[index] -= size
                break
        else:
            loads.append([(wheel, 0, size)])
            room.append(load_bytes - size)
    least = min(MIB, load_bytes // 4)  # no slivers of a part in the room a load has left
    for wheel in (w for w in wheels if w.stat().st_size > split_bytes):
        offset, size = 0, wheel.stat().st_size
        while offset < size:
            found = next((i for i, left in enumerate(room) if left >= least), None)
            if found is None:
                loads.append([])
                room.append(load_bytes)
            index = len(loads) - 1 if found is None else found
            length = min(room[index], size - offset)
            loads[index].append((wheel, offset, length))
            room[index] -= length
            offset += length
    return loads


def _copy_range(wheel: Path, offset: int, length: int, target: Path) -> None:
    with wheel.open("rb") as source, target.open("wb") as sink:
        source.seek(offset)
        while length and (block := source.read(min(CHUNK, length))):
            sink.write(block)
            length -= len(block)


def split(folder: Path, split_mib: float, load_mib: float) -> list[Path]:
    """Cut the wheels of `folder/wheels` into `folder/load-N`; returns the load folders."""
    wheels = sorted((folder / "wheels").glob("*.whl"))
    if not wheels:
        raise WheelError(f"no wheels in {folder / 'wheels'}")
    if split_mib > load_mib:
        raise WheelError(f"--split-mib {split_mib} is larger than a load ({load_mib} MiB)")
    sums = "".join(f"{sha256(wheel)}  {wheel.name}\n" for wheel in wheels)
    (folder / SUMS).write_text(sums)
    loads = _pack(wheels, int(split_mib * MIB), int(load_mib * MIB))
    counts: dict[Path, int] = {}
    for load in loads:
        for wheel, _, length in load:
            if length < wheel.stat().st_size:
                counts[wheel] = counts.get(wheel, 0) + 1
    for old in folder.glob("load-*"):
        shutil.rmtree(old)
    numbers: dict[Path, int] = {}
    folders = []
    for number, load in enumerate(loads, 1):
        target = folder / f"load-{number}"
        target.mkdir()
        for wheel, offset, length in sorted(load, key=lambda piece: (piece[0].name, piece[1])):
            if wheel not in counts:
                shutil.copy2(wheel, target / wheel.name)
                continue
            numbers[wheel] = numbers.get(wheel, 0) + 1
            name = f"{wheel.name}.part-{numbers[wheel]:02d}-of-{counts[wheel]:02d}"
            _copy_range(wheel, offset, length, target / name)
        (target / SUMS).write_text(sums)
        folders.append(target)
    return folders


def join(folder: Path, into: Path) -> list[Path]:
    """Whole wheels from every folder under `folder`, checked against SHA256SUMS, in `into`."""
    sums_files = sorted(folder.rglob(SUMS))
    if not sums_files:
        raise WheelError(f"no {SUMS} under {folder}")
    expected: dict[str, str] = {}
    for sums_file in sums_files:
        for line in sums_file.read_text().splitlines():
            digest, name = line.split(maxsplit=1)
            if expected.setdefault(name, digest) != digest:
                raise WheelError(f"{SUMS} files under {folder} disagree about {name}")
    whole = {path.name: path for path in folder.rglob("*.whl") if path.is_file()}
    parts: dict[str, dict[int, Path]] = {}
    counts: dict[str, int] = {}
    for path in folder.rglob("*.whl.part-*"):
        found = PART.match(path.name)
        if found is None:
            raise WheelError(f"{path}: not a part name (NAME.whl.part-NN-of-MM)")
        name = found["wheel"]
        parts.setdefault(name, {})[int(found["index"])] = path
        counts[name] = int(found["count"])
    into.mkdir(parents=True, exist_ok=True)
    joined = []
    for name, digest in sorted(expected.items()):
        target = into / name
        if name in whole:
            shutil.copyfile(whole[name], target)
        elif name in parts:
            missing = sorted(set(range(1, counts[name] + 1)) - set(parts[name]))
            if missing:
                raise WheelError(
                    f"{name}: parts {missing} of {counts[name]} are missing under {folder} "
                    "(each load-N folder is carried by one call)"
                )
            with target.open("wb") as sink:
                for index in range(1, counts[name] + 1):
                    with parts[name][index].open("rb") as source:
                        shutil.copyfileobj(source, sink, CHUNK)
        else:
            raise WheelError(
                f"{name} (named in {SUMS}) is under {folder} neither whole nor in parts"
            )
        actual = sha256(target)
        if actual != digest:
            raise WheelError(f"{name}: sha256 {actual}, {SUMS} says {digest}")
        joined.append(target)
    return joined


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    verbs = parser.add_subparsers(dest="verb", required=True)
    cut = verbs.add_parser("split", help="FOLDER/wheels/*.whl -> FOLDER/load-N")
    cut.add_argument("folder", type=Path)
    cut.add_argument("--split-mib", type=float, default=48.0, help="cut wheels over this")
    cut.add_argument("--load-mib", type=float, default=58.0, help="at most this per load")
    glue = verbs.add_parser("join", help="whole, checked wheels from FOLDER into INTO")
    glue.add_argument("folder", type=Path)
    glue.add_argument("into", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.verb == "split":
            for load in split(args.folder, args.split_mib, args.load_mib):
                size = sum(p.stat().st_size for p in load.iterdir()) / MIB
                print(f"{load}: {size:.1f} MiB, {len(list(load.glob('*.whl*')))} files")
            return 0
        for wheel in join(args.folder, args.into):
            print(f"checked {wheel.name} ({wheel.stat().st_size / MIB:.1f} MiB)")
        return 0
    except WheelError as error:
        print(f"wheel_parts: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
