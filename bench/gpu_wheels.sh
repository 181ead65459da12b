#!/usr/bin/env bash
# bench/gpu_wheels.sh DIR [--python 3.12] [--split-mib N] [--load-mib M]
# On a machine with a package index: downloads into DIR/wheels exactly the wheels of
# bench/gpu_wheels.txt for that Python on x86-64 manylinux, without dependencies, writes
# DIR/SHA256SUMS, cuts every wheel over N MiB (default 48) into parts and packs parts and
# small wheels into DIR/load-1, DIR/load-2, ... (at most M MiB each, default 58): carry one
# load per call to the GPU machine, then run `bash bench/gpu.sh --wheels DIR` there
# (bench/README.md, "GPU").
set -euo pipefail
cd "$(dirname "$0")/.."
usage="usage: bench/gpu_wheels.sh DIR [--python 3.12] [--split-mib N] [--load-mib M]"
[[ $# -ge 1 && $1 != -* ]] || { echo "$usage" >&2; exit 2; }
dir=$1; shift
python_version=3.12; split_mib=48; load_mib=58
while (($#)); do
  case $1 in
    --python) python_version=$2; shift 2 ;;
    --split-mib) split_mib=$2; shift 2 ;;
    --load-mib) load_mib=$2; shift 2 ;;
    *) echo "$usage" >&2; exit 2 ;;
  esac
done
python=${PYTHON:-python3}
[[ -x .venv/bin/python && -z ${PYTHON:-} ]] && python=.venv/bin/python
mkdir -p "$dir/wheels"
rm -f "$dir"/wheels/*.whl
platforms=()
for tag in manylinux_2_28 manylinux_2_27 manylinux_2_24 manylinux_2_17 manylinux2014 manylinux1; do
  platforms+=(--platform "${tag}_x86_64")
done
"$python" -m pip download --quiet --no-deps --only-binary=:all: --implementation cp \
  --python-version "$python_version" "${platforms[@]}" -d "$dir/wheels" -r bench/gpu_wheels.txt
expected=$(grep -cv '^\s*\(#\|$\)' bench/gpu_wheels.txt)
got=$(find "$dir/wheels" -name '*.whl' | wc -l)
[[ $got -eq $expected ]] || { echo "downloaded $got wheels, bench/gpu_wheels.txt names $expected" >&2; exit 1; }
"$python" -m bench.wheel_parts split "$dir" --split-mib "$split_mib" --load-mib "$load_mib"
loads=$(find "$dir" -maxdepth 1 -name 'load-*' | wc -l)
cat > "$dir/JOIN.txt" <<TEXT
Made by bench/gpu_wheels.sh for Python $python_version (cp, x86-64 manylinux), $(date -u +%F).
$got wheels (SHA256SUMS); parts of at most $split_mib MiB in $loads loads of at most $load_mib MiB.
Carry each of $dir/load-1 .. load-$loads to the GPU machine (one per call, while it stays
warm), then run there: bash bench/gpu.sh --wheels $dir --out OUT_FOLDER
bench/gpu.sh joins the parts itself; by hand: python3 -m bench.wheel_parts join $dir JOINED
(or: cat NAME.whl.part-* > NAME.whl, in order, and sha256sum -c SHA256SUMS).
TEXT
cat "$dir/JOIN.txt"
