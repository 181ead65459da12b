"""Which CUDA libraries a GPU run uses, and the device's memory, read without torch.

`python3 -m bench.gpu_libs dirs` prints the library folders of the `nvidia` pip namespace
(`nvidia/cu13/lib`, `nvidia/cudnn/lib`, ...) of every entry of sys.path, joined by ':' for
LD_LIBRARY_PATH: bench/gpu.sh exports them, so that onnxruntime.preload_dlls() (which
looks beside onnxruntime itself, here a private target folder, then in the default paths)
finds the CUDA 13 and cuDNN libraries the machine's PyTorch came with.
"""

from __future__ import annotations

import ctypes
import sys
from dataclasses import dataclass
from pathlib import Path

# Libraries whose loaded copies the run reports (from /proc/self/maps).
REPORTED = (
    "libonnxruntime_providers_cuda", "libcudart", "libcublasLt", "libcublas.", "libcudnn.",
    "libcudnn_", "libcufft", "libcurand", "libnvrtc", "libnvjpeg", "libnvimgcodec", "libcuda.",
)  # fmt: skip


def nvidia_lib_dirs(paths: list[str] | None = None) -> list[Path]:
    found: list[Path] = []
    for entry in paths if paths is not None else sys.path:
        namespace = Path(entry or ".") / "nvidia"
        if namespace.is_dir():
            found += sorted(p for p in namespace.glob("*/lib") if p.is_dir())
    return list(dict.fromkeys(found))


def loaded_libraries(maps: Path = Path("/proc/self/maps")) -> list[str]:
    """The CUDA-related shared objects mapped into this process, one path each."""
    paths = {line.split()[-1] for line in maps.read_text().splitlines() if "/" in line}
    return sorted(p for p in paths if any(Path(p).name.startswith(n) for n in REPORTED))


@dataclass(frozen=True)
class DeviceMemory:
    free: int
    total: int

    @property
    def used_mib(self) -> float:
        return (self.total - self.free) / 2**20


def device_memory(device: int = 0) -> DeviceMemory | None:
    """cudaMemGetInfo of `device` through ctypes (the CUDA runtime the machine has), or
    None without one. The first call makes this process's own context (a constant)."""
    runtime = None
    for name in ("libcudart.so.13", "libcudart.so"):
        try:
            runtime = ctypes.CDLL(name)
            break
        except OSError:
            continue
    if runtime is None:
        return None
    free, total = ctypes.c_size_t(), ctypes.c_size_t()
    if runtime.cudaSetDevice(device) != 0:
        return None
    if runtime.cudaMemGetInfo(ctypes.byref(free), ctypes.byref(total)) != 0:
        return None
    return DeviceMemory(free.value, total.value)


if __name__ == "__main__":
    if sys.argv[1:] == ["dirs"]:
        print(":".join(str(p) for p in nvidia_lib_dirs()))
        sys.exit(0)
    print("usage: python3 -m bench.gpu_libs dirs", file=sys.stderr)
    sys.exit(2)
