"""``cllm conformance``: run the conformance suite against a backend.

cllm conformance [--backend NAME] [PYTEST ARGS ...]

The suite ships with the package (the ``conformance`` package beside
``cllm_spec``), so a backend can be checked without a clone of the repository:
install the backend, then ``cllm conformance --backend NAME``. Any argument
after the options goes to pytest unchanged (``-n auto`` with pytest-xdist,
``-k softmax``, ``-x``, ``--cllm-report=report.json``, ...). It needs the test
extra: ``pip install 'cllm[test]'``.

Exit status: pytest's (0 all passed, 1 some failed, 2 interrupted, 4 usage
error, e.g. a backend that does not load, 5 no test selected).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

EXIT_USAGE = 4  # pytest's own code for a usage error


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "conformance",
        help="check a backend against the spec (the installed conformance suite)",
        description="Run the conformance suite that ships with cllm against one "
        "backend (default: the registry's default backend; 'all' for every "
        "registered one). Arguments after the options go to pytest.",
        epilog="examples:\n  cllm conformance --backend numpy -n auto\n"
        "  cllm conformance --backend mybk -k losses -x\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--backend", metavar="NAME", help="the backend to check")
    # every other argument goes to pytest (cllm.cli.main passes them on)
    p.set_defaults(func=run_conformance, pytest_args=[])


def suite_dir() -> Path:
    """Where the installed ``conformance`` package lives."""
    import conformance

    return Path(conformance.__file__).resolve().parent


def run_conformance(args: argparse.Namespace) -> int:
    # looked up, not imported: pytest must import hypothesis itself to rewrite it
    missing = [
        m for m in ("pytest", "hypothesis") if importlib.util.find_spec(m) is None
    ]
    if missing:
        print(
            f"cllm conformance: error: the suite needs {' and '.join(missing)}\n"
            "  hint: pip install 'cllm[test]'",
            file=sys.stderr,
        )
        return EXIT_USAGE
    import pytest

    root = suite_dir()
    argv = [
        str(root),
        # node ids start with conformance/ wherever the package is installed
        f"--rootdir={root.parent}",
        "-p",
        "no:cacheprovider",  # nothing written next to an installed package
    ]
    if args.backend:
        argv.append(f"--backend={args.backend}")
    argv += [a for a in args.pytest_args if a != "--"]
    return int(pytest.main(argv))
