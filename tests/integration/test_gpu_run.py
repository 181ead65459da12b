"""The GPU run, rehearsed on the CPU (issue 29): `bench/gpu.sh --wheels DIR --allow-cpu`
joins and checks carried wheel parts, installs them into a private target folder, and runs
every section of bench/gpu.py with short windows, so that on a GPU machine only what needs
the GPU can fail. The wheel here is a probe made on the spot (the real set is 280 MiB)."""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from bench.gpu_sections import NAMES
from bench.wheel_parts import split
from tests.serving import REPO_ROOT

PROBE = "cnnserve_probe-1.0-py3-none-any.whl"


def probe_wheel(path: Path) -> None:
    """A valid wheel of one module, padded so that it must travel in parts."""
    files = {
        "cnnserve_probe.py": b"PADDING = '" + b"x" * 300_000 + b"'\n",
        "cnnserve_probe-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: cnnserve-probe\n"
        b"Version: 1.0\n",
        "cnnserve_probe-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: tests\n"
        b"Root-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    record.append("cnnserve_probe-1.0.dist-info/RECORD,,")
    files["cnnserve_probe-1.0.dist-info/RECORD"] = ("\n".join(record) + "\n").encode()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as wheel:
        for name, data in files.items():
            wheel.writestr(name, data)


def test_gpu_run_from_carried_parts_on_the_cpu(tmp_path: Path) -> None:
    carried = tmp_path / "gpuwheels"
    (carried / "wheels").mkdir(parents=True)
    probe_wheel(carried / "wheels" / PROBE)
    loads = split(carried, split_mib=0.1, load_mib=0.2)
    assert len(loads) >= 2 and any(load.glob("*.part-*") for load in loads)
    shutil.rmtree(carried / "wheels")  # what reaches the device: the loads alone
    site, out = tmp_path / "site", tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable, "CNNSERVE_GPU_SITE": str(site)}
    run = subprocess.run(
        ["bash", "bench/gpu.sh", "--wheels", str(carried), "--allow-cpu", "--out", str(out)],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert f"checked {PROBE}" in run.stdout
    assert (site / "cnnserve_probe.py").exists()  # installed in the private target only
    report = (out / "gpu.md").read_text()
    assert report == run.stdout[run.stdout.index("# bench/gpu.sh") :]
    assert "\nskipped: " not in report and "failed: none" in report  # no section left out
    assert report.count("\n## ") == len(NAMES)  # every section ran
    for header in (
        "| model | in-process best img/s (batch) | c=1 img/s (p50/p99 ms)",
        "| step | GPU used MiB | vs first load | server RSS MiB |",
        "| batch | io_binding on img/s | off img/s | on / off |",
        "| search | session load |",
        "| input | request | c | img/s (p50/p99 ms) |",
        "| workers | c=4 img/s (p50/p99 ms) | x one worker |",
        "| method | ms per 12 MP photo |",
    ):
        assert header in report
    assert "measuring on the CPU" in report  # never passed off as a GPU run
    assert report.count("not applicable here") >= 3
