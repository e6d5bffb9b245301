"""Run a command with AddressSanitizer preloaded, for the tox env ``asan``.

The extension is built with ``-fsanitize=address,undefined`` (CLLM_C_SANITIZE=1)
but the Python interpreter is not, so the ASan runtime must be loaded first:
this finds gcc's libasan and re-executes the command with it in LD_PRELOAD.
Any sanitizer report aborts the process (halt_on_error), so a passing run has
zero reports. Leak checking is off: the interpreter itself never frees
everything at exit.

    python backends/c/tools/asan_run.py pytest conformance --backend=c -p no:xdist
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys


def runtime(name: str) -> str:
    """The path of gcc's ``name`` (libasan.so), or exit with the reason."""
    cc = os.environ.get("CC") or shutil.which("gcc") or "gcc"
    path = subprocess.run(
        [cc, f"-print-file-name={name}"], capture_output=True, text=True, check=True
    ).stdout.strip()
    if not os.path.isabs(path) or not os.path.exists(path):
        sys.exit(f"asan_run: {cc} does not provide {name}")
    return path


def main(argv: list[str]) -> int:
    if not argv:
        sys.exit("usage: asan_run.py COMMAND [ARGS...]")
    env = dict(os.environ)
    env["LD_PRELOAD"] = " ".join(
        p for p in (runtime("libasan.so"), env.get("LD_PRELOAD")) if p
    )
    env.setdefault("ASAN_OPTIONS", "detect_leaks=0:halt_on_error=1:abort_on_error=1")
    env.setdefault("UBSAN_OPTIONS", "halt_on_error=1:print_stacktrace=1")
    command = shutil.which(argv[0]) or argv[0]
    os.execve(command, argv, env)
    return 127  # not reached


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
