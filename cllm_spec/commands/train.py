"""``cllm train``: train a model (see cllm_spec.train.trainer for what it does).

cllm train [--config RUN.toml] [--backend NAME] [--set SECTION.KEY=VALUE ...]
           [--resume PATH] [--overwrite] [--print-config]

Exit status:
    0    the run finished (or stopped at train.time_limit) with a checkpoint
    1    training diverged (non-finite loss, gradient or parameters), or an
         I/O error; the earlier checkpoints are intact
    2    a bad command line, config, corpus or checkpoint: ``cllm train: error:``
         and the message with its hint on stderr, no traceback
    130  interrupted by Ctrl-C: a checkpoint of the last step was saved (or, on
         a second Ctrl-C, the run was aborted without one)
    143  stopped by SIGTERM (batch schedulers, docker stop, kill): the same as
         Ctrl-C

A worker thread's error ends the run with that error (its notes name the
worker, the group and the step). Under ``mpiexec`` every rank runs this command;
a rank that fails aborts the whole job and mpiexec exits non-zero; when a rank
is lost (killed, or aborting the job), rank 0's watcher prints one
``cllm train: error: the MPI job ... ended abnormally`` line with the resume
command (cllm_spec.train.watchdog).
"""

from __future__ import annotations

import argparse
import signal
import sys

from cllm_spec.errors import CllmError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143  # 128 + SIGTERM

DESCRIPTION = """\
Train a small GPT model. Every setting has a default, so `cllm train` alone
trains a character-level model on the bundled corpus (Pride and Prejudice) and
writes its checkpoints to runs/default. Settings come from the defaults, then
the checkpoint's run (with --resume), then --config, then --set.
"""

EPILOG = """\
examples:
  cllm train
  cllm train --print-config > run.toml            # every field, with its range
  cllm train --config configs/seed-minimal.toml   # the example configs in configs/
  cllm train --config run.toml --set train.steps=2000 --set optim.lr=1e-3
  cllm train --resume runs/default --set train.steps=3000
  cllm train --set parallel.workers=2          # two worker threads, same bits
  mpiexec -n 2 cllm train --set parallel.engine=mpi   # two processes (cllm[mpi])

exit status: 0 done, 1 diverged, 2 bad input, 130 interrupted (checkpoint saved),
143 SIGTERM (checkpoint saved)
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "train",
        help="train a model (defaults: the bundled corpus, a small model)",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", metavar="RUN.toml", help="a TOML run config")
    p.add_argument(
        "--backend", metavar="NAME", help="the compute backend (sets train.backend)"
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one config field (repeatable), e.g. train.steps=100",
    )
    p.add_argument(
        "--resume",
        metavar="PATH",
        help="continue from a checkpoint file, or from the latest one in a run dir",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="first delete the checkpoints in train.out_dir of an earlier run "
        "(or, with --resume, those after the resumed step)",
    )
    p.add_argument(
        "--print-config",
        action="store_true",
        help="print the complete resolved config (defaults, --config, --set) as "
        "TOML, one comment per field with its range and meaning, and exit",
    )
    p.set_defaults(func=run_train)


def print_config(args: argparse.Namespace, overrides: list[str]) -> int:
    from cllm_spec.train.config import clamp_warmup, load_config
    from cllm_spec.train.config_docs import render_toml

    if args.resume:
        print(
            "cllm train: error: --print-config shows a new run's config; for a "
            "checkpoint's run use: cllm info PATH",
            file=sys.stderr,
        )
        return EXIT_USAGE
    try:
        cfg, notice = clamp_warmup(load_config(args.config, overrides))
    except CllmError as exc:
        print(f"cllm train: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if notice:
        print(f"# note: {notice}")
    print(render_toml(cfg), end="")
    return EXIT_OK


def run_train(args: argparse.Namespace) -> int:
    # Imported here so that `cllm --help` does not load the training stack.
    from cllm_spec.train.trainer import DivergedError, train

    overrides = list(args.overrides)
    if args.backend:
        overrides.append(f"train.backend={args.backend}")
    if args.print_config:
        return print_config(args, overrides)
    try:
        result = train(
            args.config, overrides, resume=args.resume, overwrite=args.overwrite
        )
    except DivergedError as exc:
        print(f"cllm train: {exc}{_notes(exc)}", file=sys.stderr)
        return EXIT_FAILED
    except CllmError as exc:
        print(f"cllm train: error: {exc}{_notes(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"cllm train: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt as exc:
        print(
            "cllm train: aborted without saving this step; earlier checkpoints are "
            "intact",
            file=sys.stderr,
        )
        return 128 + getattr(exc, "signum", signal.SIGINT)
    return {"interrupted": EXIT_INTERRUPTED, "terminated": EXIT_TERMINATED}.get(
        result.status, EXIT_OK
    )


def _notes(exc: BaseException) -> str:
    """The exception's notes (e.g. which worker raised it), one per line."""
    return "".join(f"\n  {note}" for note in getattr(exc, "__notes__", ()))
