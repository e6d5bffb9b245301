"""The ``cllm`` command line.

cllm --version
cllm backends [--json]      every registered backend: version, availability, build

A warning of the spec (:class:`cllm_spec.errors.CllmWarning`, e.g. a corpus file
that is not valid UTF-8) is printed as one line on stderr, ``cllm COMMAND:
warning: MESSAGE``, without Python's file and line; other warnings as usual.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any, TextIO

import cllm_spec
from cllm_spec.commands import COMMAND_MODULES
from cllm_spec.errors import CllmWarning
from cllm_spec.registry import default_backend_name, describe_backends


def _format_build(info: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(info.items()))


def cmd_backends(args: argparse.Namespace) -> int:
    rows = describe_backends()
    if args.json:
        print(json.dumps(rows, indent=2, sort_keys=True))
        return 0
    default = default_backend_name()
    for row in rows:
        mark = "*" if row["name"] == default else " "
        if row["available"]:
            status = f"available  {_format_build(row['build_info'])}"
        else:
            status = f"unavailable: {row['reason']}"
            if row.get("fix"):
                status += f"\n{'':20}fix: {row['fix']}"
        print(f"{mark} {row['name']:<8} {row['version'] or '-':<8} {status}")
    print(
        "(* = the default of every command and of the conformance suite: "
        "$CLLM_BACKEND, else c when it loads, else numpy)"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cllm",
        description="Train, sample and check small transformer language models.",
    )
    parser.add_argument(
        "--version", action="version", version=f"cllm {cllm_spec.__version__}"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser(
        "backends",
        help="list the backends and whether they load",
        description="List every registered backend (entry-point group "
        "cllm_spec.backends): its version, whether it loads here and, if not, "
        "why and how to fix it, and how it was built (SIMD level, threads, BLAS). "
        "The default backend is marked with *.",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_backends)
    for name in COMMAND_MODULES:
        importlib.import_module(f"cllm_spec.commands.{name}").register(sub)
    return parser


ShowWarning = Callable[..., None]


def one_line_warnings(prog: str, fallback: ShowWarning) -> ShowWarning:
    """A ``warnings.showwarning`` printing a CllmWarning as ``prog: warning: ...``."""

    def show(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: TextIO | None = None,
        line: str | None = None,
    ) -> None:
        if not issubclass(category, CllmWarning):
            fallback(message, category, filename, lineno, file, line)
            return
        print(f"{prog}: warning: {message}", file=sys.stderr if file is None else file)

    return show


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # only a command that passes arguments on (conformance) takes them
        if not hasattr(args, "pytest_args"):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.pytest_args = [*args.pytest_args, *extra]
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    with warnings.catch_warnings():  # restores showwarning when the command ends
        warnings.showwarning = one_line_warnings(
            f"cllm {args.command}", warnings.showwarning
        )
        result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
