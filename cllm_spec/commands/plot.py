"""``cllm plot RUN_DIR [-o PNG]``: training curves of a run as a PNG.

Reads ``RUN_DIR/metrics.jsonl`` (or the file itself when a file is given): one
JSON object per line, as ``cllm train`` logs them. The keys used:

    step       the optimizer step (x axis); a row without it is skipped
    loss       training loss at that step          -> "train loss" curve
    val_loss   validation loss (evaluation rows)   -> "validation loss" curve
    lr         learning rate at that step          -> lower panel

Every other key is ignored, and a row may hold any subset of the three (a
training row has loss and lr, an evaluation row val_loss). Values that are not
finite numbers are skipped, as are blank lines and lines that are not JSON
objects (a run killed mid-write can leave a partial last line); the number of
such lines is reported on stderr. A file without a single usable value is an
error.

The figure (matplotlib, drawn off-screen with the Agg renderer): the upper
panel plots the training loss as a line and the validation loss as dots joined
by a line, in nats against the step; the lower panel, present when the rows
have an ``lr``, plots the learning rate against the same steps. Written to
``-o PNG``, default ``RUN_DIR/metrics.png``. matplotlib is an optional extra:
without it the command fails with the hint ``pip install "cllm[plot]"``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cllm_spec.commands.info import reports_errors
from cllm_spec.errors import EmptyInputError, Unsupported

METRICS_FILE = "metrics.jsonl"
DEFAULT_OUTPUT = "metrics.png"
PLOT_KEYS = ("loss", "val_loss", "lr")
INSTALL_HINT = 'pip install "cllm[plot]"  (installs matplotlib)'


@dataclass
class Curves:
    """``key -> (steps, values)`` for each of PLOT_KEYS, and the lines skipped."""

    points: dict[str, tuple[list[float], list[float]]] = field(
        default_factory=lambda: {key: ([], []) for key in PLOT_KEYS}
    )
    skipped: int = 0

    def has(self, key: str) -> bool:
        return bool(self.points[key][0])


def _number(value: Any) -> float | None:
    """``value`` as a finite float, or None (bools are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def parse_metrics(lines: list[str]) -> Curves:
    """The curves of the rows in ``lines`` (module docstring for the rules)."""
    curves = Curves()
    for line in lines:
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if not isinstance(row, dict):
            curves.skipped += 1
            continue
        step = _number(row.get("step"))
        if step is None:
            continue
        for key in PLOT_KEYS:
            value = _number(row.get(key))
            if value is not None:
                curves.points[key][0].append(step)
                curves.points[key][1].append(value)
    return curves


def metrics_path(run: str | Path) -> Path:
    """``RUN_DIR/metrics.jsonl``, or ``run`` itself when it is a file."""
    path = Path(run)
    return path / METRICS_FILE if path.is_dir() else path


def read_metrics(path: Path) -> Curves:
    """Parse ``path``; a file with no usable value is an EmptyInputError."""
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no such file (expected a run directory holding "
            f"{METRICS_FILE}, or that file)"
        )
    with path.open("rb") as fh:
        head = fh.read(8)
    if path.suffix == ".safetensors" or b"\x00" in head:  # a length, not text
        raise EmptyInputError(
            f"{path}: a checkpoint, not a metrics log",
            hint=f"plot the run directory that holds it: cllm plot {path.parent}",
        )
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise EmptyInputError(
            f"{path}: not a text file (not UTF-8 at byte {exc.start})",
            hint=f"name a run directory or its {METRICS_FILE}",
        ) from exc
    curves = parse_metrics(text.splitlines())
    if not any(curves.has(key) for key in PLOT_KEYS):
        raise EmptyInputError(
            f"{path}: no row with a step and a finite {', '.join(PLOT_KEYS)}",
            hint='rows look like {"step": 10, "loss": 3.2, "lr": 0.001}',
        )
    return curves


def _figure_class() -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise Unsupported(
            f"matplotlib is not installed ({exc}); cllm plot needs it",
            hint=INSTALL_HINT,
        ) from exc
    return Figure


def draw(curves: Curves, title: str, output: Path) -> None:
    """Write the PNG described in the module docstring."""
    # Figure without pyplot: no global state, no GUI; PNG goes through Agg
    figure_class = _figure_class()
    with_lr = curves.has("lr")
    fig = figure_class(figsize=(8.0, 6.0 if with_lr else 4.0), layout="constrained")
    axes = fig.subplots(
        2 if with_lr else 1,
        1,
        sharex=True,
        squeeze=False,
        height_ratios=[3, 1.4] if with_lr else [1],
    )[:, 0]
    loss_ax = axes[0]
    if curves.has("loss"):
        loss_ax.plot(*curves.points["loss"], lw=1.2, color="C0", label="train loss")
    if curves.has("val_loss"):
        loss_ax.plot(
            *curves.points["val_loss"],
            "o-",
            ms=4,
            lw=1.2,
            color="C3",
            label="validation loss",
        )
    if curves.has("loss") or curves.has("val_loss"):
        loss_ax.legend(loc="upper right")
    else:
        loss_ax.text(
            0.5, 0.5, "no loss values", ha="center", transform=loss_ax.transAxes
        )
    loss_ax.set_ylabel("cross-entropy (nats)")
    loss_ax.set_title(title)
    loss_ax.grid(True, alpha=0.3)
    if with_lr:
        lr_ax = axes[1]
        lr_ax.plot(*curves.points["lr"], lw=1.2, color="C2")
        lr_ax.set_ylabel("learning rate")
        lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
        lr_ax.grid(True, alpha=0.3)
    axes[-1].set_xlabel("step")
    fig.savefig(output, dpi=110)


@reports_errors("plot")
def cmd_plot(args: argparse.Namespace) -> int:
    source = metrics_path(args.run_dir)
    curves = read_metrics(source)
    if curves.skipped:
        print(
            f"cllm plot: note: skipped {curves.skipped} line(s) of {source} that "
            "are not JSON objects",
            file=sys.stderr,
        )
    output = Path(args.output) if args.output else source.parent / DEFAULT_OUTPUT
    draw(curves, f"run {source.parent.resolve().name}", output)
    print(f"wrote {output}")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``cllm plot``."""
    p = sub.add_parser(
        "plot",
        help="plot a run's loss and learning rate to a PNG",
        description=(__doc__ or "").replace("``", ""),  # no reST in --help
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory or its jsonl")
    p.add_argument(
        "-o",
        "--output",
        default=None,
        metavar="PNG",
        help=f"output file (default RUN_DIR/{DEFAULT_OUTPUT})",
    )
    p.set_defaults(func=cmd_plot)
