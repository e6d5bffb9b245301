"""Build the ``cllm_c._ffi`` extension with cffi's out-of-line API mode.

At install time setuptools runs this file through ``cffi_modules``
(``"backends/c/cllm_c/_build.py:ffibuilder"``); for development build in place::

    cd backends/c && python cllm_c/_build.py

The module is compiled for baseline x86-64 (no ``-march=native``, so the wheel
runs on any x86-64); the AVX2 and AVX-512 kernels carry per-function target
attributes and are chosen at run time (``csrc/cpu.c``). No ``-ffast-math``:
``-fno-math-errno`` only lets ``sqrtf`` compile to one instruction and changes
no value. ``CLLM_C_SANITIZE=1`` builds with AddressSanitizer and UBSan (the tox
env ``asan``). Threads are plain pthreads (``csrc/threads.c``): no OpenMP runtime.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from cffi import FFI

PACKAGE_DIR = Path(__file__).resolve().parent
CSRC = PACKAGE_DIR / "csrc"
CDEF = PACKAGE_DIR / "_cdef.h"


def _relative(path: Path) -> str:
    """Paths relative to the working directory: setuptools rejects absolute ones."""
    return os.path.relpath(path, Path.cwd())


def compile_flags() -> tuple[list[str], list[str]]:
    """(extra_compile_args, extra_link_args) for the current environment."""
    cflags = ["-std=c99", "-O3", "-fno-math-errno", "-Wall", "-Wextra"]
    cflags.append("-Wno-unused-parameter")
    cflags.append("-pthread")
    ldflags = ["-pthread"]
    if os.environ.get("CLLM_C_SANITIZE", "0") not in ("", "0"):
        sanitize = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-g"]
        sanitize.append("-fno-sanitize-recover=undefined")
        cflags = [f for f in cflags if f != "-O3"] + ["-O1", *sanitize]
        ldflags += sanitize
    ldflags.append("-lm")
    return cflags, ldflags


def make_builder() -> FFI:
    builder = FFI()
    builder.cdef(CDEF.read_text())
    cflags, ldflags = compile_flags()
    # the flags are part of the generated source, so switching to or from the
    # sanitized build changes _ffi.c and setuptools cannot reuse a stale .so
    flags = " ".join(cflags + ldflags)
    builder.set_source(
        "cllm_c._ffi",
        f'/* cllm_c build flags: {flags} */\n#include "cllm.h"\n',
        sources=[_relative(p) for p in sorted(CSRC.glob("*.c"))],
        include_dirs=[_relative(CSRC)],
        extra_compile_args=cflags,
        extra_link_args=ldflags,
    )
    return builder


ffibuilder = make_builder()


if __name__ == "__main__":
    # build in place: the .so lands next to this file
    os.chdir(PACKAGE_DIR.parent)
    ffibuilder = make_builder()
    # cffi compiles from tmpdir, so it must be the directory the relative
    # source paths start from; the .so lands in ./cllm_c/
    print(ffibuilder.compile(tmpdir=".", verbose=False), file=sys.stderr)
