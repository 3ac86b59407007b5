"""The CPU build of the CUDA backend (csrc/cuda/harness/host_driver.cpp) for the tests.

The same drivers, glue, dispatch and functors as fusedrnn._C_cuda, with each kernel launch
replaced by a walk over its grid, behind :func:`fusedrnn.ops.cuda.make_layer`. It needs a C++
compiler and the CUDA headers (cuda_fp16.h, found beside nvcc); it is built once per process
into build/cuda_host_driver (rebuilt when a source changes).
"""

from __future__ import annotations

import functools
import shutil
import tempfile
from pathlib import Path

from fusedrnn import cuda_report
from fusedrnn.ops import cuda

ROOT = Path(__file__).resolve().parent.parent


def cuda_include() -> Path | None:
    nvcc = cuda_report.find_nvcc()
    if nvcc is None:
        return None
    inc = Path(nvcc).resolve().parent.parent / "include"
    return inc if (inc / "cuda_fp16.h").is_file() else None


def why_not() -> str | None:
    """Why the host build cannot be made here (None when it can)."""
    if cuda_include() is None:
        return "the CUDA headers (cuda_fp16.h) are needed to build the CPU walk of the kernels"
    if shutil.which("c++") is None and shutil.which("g++") is None:
        return "no C++ compiler"
    return None


@functools.cache
def host_layer():
    """fusedrnn.ops.cuda's layer op over the host build; ``.ext`` is the extension module."""
    from torch.utils.cpp_extension import load

    build = ROOT / "build" / "cuda_host_driver"
    try:
        build.mkdir(parents=True, exist_ok=True)
    except OSError:  # read-only checkout
        build = Path(tempfile.mkdtemp(prefix="cuda_host_driver"))
    ext = load(
        name="fusedrnn_cuda_host_driver",
        sources=[str(ROOT / "csrc" / "cuda" / "harness" / "host_driver.cpp")],
        extra_include_paths=[str(ROOT / "csrc"), str(cuda_include())],
        extra_cflags=["-O1"],
        build_directory=str(build),
    )
    layer = cuda.make_layer("cuda_host_test", lambda: ext, device_type="cpu")
    layer.ext = ext
    return layer
