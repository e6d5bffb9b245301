"""``cllm eval CKPT --data PATH``: score a checkpoint on a text.

The text at ``PATH`` (a file, or every text file under a directory, as
``cllm train`` reads a corpus) is encoded with the checkpoint's tokenizer into
``ids: (N,)``. Each of the N - 1 next-token predictions is scored exactly once,
over non-overlapping windows of ``T = --seq-len`` (default: the model's
block_size)::

    window w:   inputs ids[w*T : w*T + T],   targets ids[w*T + 1 : w*T + T + 1]

for the W = (N - 1) // T full windows, run ``--batch-size`` at a time, plus one
shorter window for the remaining (N - 1) - W*T predictions, if any. Every
window starts from an empty context, so its first predictions see little text:
the scores are those of training's windows, not of a sliding context.

Printed (``--json``: one JSON object with the same keys):

    loss                 mean cross-entropy (nats) over the N - 1 predictions
    perplexity           exp(loss)
    accuracy             fraction whose argmax is the target
    top5_accuracy        fraction whose target ranks among the min(5, V) best
    macro_precision      macro averages over the classes present in the
    macro_recall         targets or the argmax predictions
    macro_f1             (cllm_spec.metrics.macro_precision_recall_f1)

Words the tokenizer does not know are ``<unk>`` targets like any other. The
backend is chosen as for ``cllm generate``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from tqdm import tqdm  # type: ignore[import-untyped]

from cllm_spec import checks
from cllm_spec.commands.info import (
    json_safe,
    load_checkpoint,
    load_tokenizer,
    reports_errors,
    select_backend,
)
from cllm_spec.data.corpus import read_corpus
from cllm_spec.errors import ConfigError, EmptyInputError
from cllm_spec.metrics import (
    macro_precision_recall_f1,
    perplexity,
    token_accuracy,
    top_k_accuracy,
)
from cllm_spec.model import ModelConfig, forward

DEFAULT_BATCH_SIZE = 8
TOP_K = 5


@dataclass(frozen=True)
class EvalResult:
    tokens: int  # N
    predictions: int  # N - 1
    loss: float
    perplexity: float
    accuracy: float
    top5_accuracy: float
    macro_precision: float
    macro_recall: float
    macro_f1: float


def windows(
    ids: np.ndarray, seq_len: int, batch_size: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(inputs, targets)`` batches, each (B', T'), covering every prediction once.

    ``ids: (N,)`` int with N >= 2; see the module docstring for the layout.
    """
    t = seq_len
    n_pred = ids.size - 1
    w = n_pred // t
    inputs = ids[: w * t].reshape(w, t)  # (W, T)
    targets = ids[1 : w * t + 1].reshape(w, t)  # (W, T)
    for start in range(0, w, batch_size):
        yield inputs[start : start + batch_size], targets[start : start + batch_size]
    if n_pred > w * t:  # the tail: one shorter window
        yield ids[w * t : n_pred][None, :], ids[w * t + 1 :][None, :]  # (1, R)


def validate_evaluate(
    cfg: ModelConfig, ids: object, seq_len: object, batch_size: object
) -> tuple[np.ndarray, int, int]:
    """``ids: (N,)`` int, N >= 2; 1 <= seq_len <= block_size; batch_size >= 1."""
    tokens = checks.expect_int("ids", ids)
    checks.expect_rank("ids", tokens, 1)
    if tokens.size < 2:
        raise EmptyInputError(
            f"the text encodes to {tokens.size} token(s); at least 2 are needed "
            "for one prediction",
            hint="pass a longer text",
        )
    checks.expect_ids("ids", tokens, cfg.vocab_size)
    t = checks.expect_positive_int("seq_len", seq_len)
    if t > cfg.block_size:
        raise ConfigError(
            f"seq_len: expected <= the model's block_size {cfg.block_size}, got {t}"
        )
    return tokens, t, checks.expect_positive_int("batch_size", batch_size)


def evaluate(
    backend: Any,
    cfg: ModelConfig,
    params: np.ndarray,
    ids: np.ndarray,
    seq_len: int,
    batch_size: int,
    progress: Callable[[int], object] | None = None,
) -> EvalResult:
    """Score ``params`` on ``ids`` (module docstring); one forward per batch.

    ``progress``, when given, is called after each batch with the number of
    predictions it scored (they add up to N - 1).
    """
    ids, seq_len, batch_size = validate_evaluate(cfg, ids, seq_len, batch_size)
    k = min(TOP_K, cfg.vocab_size)
    loss_sum = 0.0
    hits = top_hits = 0
    preds, targets = [], []
    for x, y in windows(ids, seq_len, batch_size):
        logits, loss, _ = forward(backend, cfg, params, x, y)  # (B, T, V)
        flat = logits.reshape(-1, cfg.vocab_size)  # (B*T, V)
        y_flat = y.reshape(-1)  # (B*T,)
        n = y_flat.size
        assert loss is not None  # forward ran with targets
        loss_sum += loss * n  # every target counts: no -100 in plain text
        # the metrics return fractions of n; round back to exact counts
        hits += round(token_accuracy(flat, y_flat) * n)
        top_hits += round(top_k_accuracy(flat, y_flat, k) * n)
        preds.append(np.argmax(flat, axis=-1))
        targets.append(y_flat)
        if progress is not None:
            progress(n)
    total = ids.size - 1
    mean_loss = loss_sum / total
    precision, recall, f1 = macro_precision_recall_f1(
        np.concatenate(preds), np.concatenate(targets), cfg.vocab_size
    )
    return EvalResult(
        tokens=int(ids.size),
        predictions=total,
        loss=mean_loss,
        perplexity=perplexity(mean_loss),
        accuracy=hits / total,
        top5_accuracy=top_hits / total,
        macro_precision=precision,
        macro_recall=recall,
        macro_f1=f1,
    )


@reports_errors("eval")
def cmd_eval(args: argparse.Namespace) -> int:
    ckpt = load_checkpoint(args.checkpoint)
    tokenizer = load_tokenizer(ckpt)
    backend, _ = select_backend(args.backend, ckpt.metadata, "eval")
    ids = tokenizer.encode(read_corpus(args.data))
    seq_len = ckpt.cfg.block_size if args.seq_len is None else args.seq_len
    # on stderr, only on a terminal and only for runs longer than a second
    with tqdm(
        total=max(len(ids) - 1, 0),
        unit="tok",
        desc="cllm eval",
        file=sys.stderr,
        disable=None,
        delay=1.0,
        leave=False,
    ) as bar:
        result = evaluate(
            backend, ckpt.cfg, ckpt.params, ids, seq_len, args.batch_size, bar.update
        )
    report = {
        "checkpoint": str(ckpt.path),
        "step": ckpt.step,
        "data": str(args.data),
        "backend": backend.name,
        "seq_len": seq_len,
        "batch_size": args.batch_size,
        **asdict(result),
    }
    if args.json:
        print(json.dumps(json_safe(report), indent=2, sort_keys=True))
    else:
        print(format_report(report))
    return 0


def format_report(report: dict[str, Any]) -> str:
    """The human-readable table of the eval report."""
    lines = []
    for key, value in report.items():
        text = f"{value:.4f}" if isinstance(value, float) else str(value)
        lines.append(f"{key:<16} {text}")
    return "\n".join(lines)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``cllm eval``."""
    p = sub.add_parser(
        "eval",
        help="loss, perplexity and accuracy of a checkpoint on a text",
        description=(__doc__ or "").replace("``", ""),  # no reST in --help
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("checkpoint", metavar="CKPT", help="a checkpoint file or run dir")
    p.add_argument(
        "--data", required=True, metavar="PATH", help="a text file or directory"
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=DEFAULT_BATCH_SIZE,
        metavar="B",
        help=f"windows per forward (default {DEFAULT_BATCH_SIZE})",
    )
    p.add_argument(
        "--seq-len",
        type=int,
        default=None,
        metavar="T",
        help="window length (default: the model's block_size)",
    )
    p.add_argument("--backend", default=None, metavar="NAME")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_eval)
