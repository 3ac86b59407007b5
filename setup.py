"""Build of the compiled extensions; package metadata lives in pyproject.toml.

Install with ``pip install --no-build-isolation -e .`` (torch must already be installed:
the build compiles against it). Builds

* ``fusedrnn._C``      the CPU backend (csrc/cpu, csrc/cell_math.h) whenever a C++ compiler
                       exists; set FUSEDRNN_SKIP_CPU_BUILD=1 to skip it, and
                       FUSEDRNN_TEST_HOOKS=1 for the test build (.ci/run), which adds the
                       switches the tests use to run both strategies of a choice;
* the CUDA extension   see :func:`cuda_extensions`.

Without a compiler (or without torch) the pure-Python package still installs and the
reference backend is used.
"""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent
CSRC = ROOT / "csrc"


def _say(msg: str) -> None:
    print(f"fusedrnn setup: {msg}", file=sys.stderr)


def _have_cxx() -> bool:
    cxx = os.environ.get("CXX") or sysconfig.get_config_var("CXX") or "c++"
    return shutil.which(cxx.split()[0]) is not None or shutil.which("c++") is not None


def cpu_extensions() -> list:
    if os.environ.get("FUSEDRNN_SKIP_CPU_BUILD", "0") not in ("", "0"):
        _say("FUSEDRNN_SKIP_CPU_BUILD is set, not building the CPU extension fusedrnn._C")
        return []
    if not _have_cxx():
        _say("no C++ compiler found, not building the CPU extension fusedrnn._C")
        return []
    from torch.utils.cpp_extension import CppExtension

    sources = sorted(str(p.relative_to(ROOT)) for p in (CSRC / "cpu").glob("*.cpp"))
    if sys.platform == "win32":
        cxx_flags = ["/O2", "/openmp", "/std:c++17"]
        link_flags: list[str] = []
    else:
        # -fno-trapping-math lets the compiler if-convert the branch-free selects in the
        # activations (results are unchanged); no -march: kernels_avx2.cpp / kernels_avx512.cpp
        # and sgemm_simd.cpp target their ISAs per function, selected only on CPUs that have them.
        cxx_flags = ["-O3", "-g0", "-fopenmp", "-fno-trapping-math", "-fno-math-errno"]
        link_flags = ["-fopenmp"]
    # FUSEDRNN_TEST_HOOKS=1 (the test build, .ci/run) adds switches that let the tests run
    # both strategies of a choice (own GEMM or BLAS, row blocks or split steps)
    hooks = os.environ.get("FUSEDRNN_TEST_HOOKS", "0") not in ("", "0")
    return [
        CppExtension(
            "fusedrnn._C",
            sources,
            include_dirs=[str(CSRC)],
            define_macros=[("FUSEDRNN_TEST_HOOKS", "1")] if hooks else [],
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=link_flags,
        )
    ]


# ---------------------------------------------------------------------------------------------
# CUDA extension: owned by the CUDA kernels (csrc/cuda). Return the list of extensions to
# build (e.g. a CUDAExtension named "fusedrnn._C_cuda"), or [] to skip. Keep the skip message
# to one line.
# ---------------------------------------------------------------------------------------------
def cuda_extensions() -> list:
    """[CUDAExtension fusedrnn._C_cuda] when torch has CUDA and nvcc exists, else [].

    Kernels are csrc/cuda/*.cu (plain nvcc, no torch headers) plus the thin binding
    csrc/cuda/bindings.cpp. Target GPUs follow TORCH_CUDA_ARCH_LIST as for any torch extension
    (e.g. TORCH_CUDA_ARCH_LIST="8.0;9.0"; unset: the visible GPUs, or all if none is visible).
    """
    what = "not building the CUDA extension fusedrnn._C_cuda"
    if os.environ.get("FUSEDRNN_SKIP_CUDA_BUILD", "0") not in ("", "0"):
        _say(f"FUSEDRNN_SKIP_CUDA_BUILD is set, {what}")
        return []
    import torch

    if not torch.version.cuda:
        _say(f"torch {torch.__version__} is a CPU-only build, {what}")
        return []
    from torch.utils.cpp_extension import CUDA_HOME, CUDAExtension

    nvcc = Path(CUDA_HOME or "") / "bin" / ("nvcc.exe" if sys.platform == "win32" else "nvcc")
    if not CUDA_HOME or not nvcc.is_file():
        _say(f"nvcc not found (set CUDA_HOME to the CUDA toolkit), {what}")
        return []
    cuda_dir = CSRC / "cuda"
    files = [cuda_dir / "bindings.cpp", *sorted(cuda_dir.glob("*.cu"))]
    sources = [str(p.relative_to(ROOT)) for p in files]
    cxx_flags = ["/O2"] if sys.platform == "win32" else ["-O3"]
    return [
        CUDAExtension(
            "fusedrnn._C_cuda",
            sources,
            include_dirs=[str(CSRC)],
            extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3"]},
        )
    ]


# ---------------------------------------------------------------------------------------------


def main() -> None:
    ext_modules: list = []
    cmdclass: dict = {}
    try:
        import torch  # noqa: F401
        from torch.utils.cpp_extension import BuildExtension
    except ImportError:
        _say(
            "torch is not importable, building no extensions (install torch first, then "
            "pip install --no-build-isolation -e .)"
        )
    else:
        ext_modules = cpu_extensions() + cuda_extensions()
        if ext_modules:
            cmdclass = {"build_ext": BuildExtension.with_options(use_ninja=True)}
    setup(ext_modules=ext_modules, cmdclass=cmdclass)


main()
