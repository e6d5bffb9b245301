"""The C backend against NumPy and PyTorch on the same model, side by side.

Contestants: ``c`` and ``numpy`` (the project's backends, through its public
API), ``torch`` (eager) and ``torch.compile``, all float32, all loaded with the
same flat parameter buffer (``peers_torch.load_flat``) and fed the same batch.
Every figure is the median of ``--repeat`` rounds; within a round the
contestants take turns (the order rotates every round), so a disturbance of the
shared machine tends to hit all of them.

    python benchmarks/peers.py                         # everything, ~15 min
    python benchmarks/peers.py --configs default,small --threads 1 --what train
    python benchmarks/peers.py --contestants c,numpy --configs tiny --repeat 1
    python benchmarks/peers.py --write-results benchmarks/RESULTS.md  # its tables
    tox -e bench                                       # the same, with torch

Figures (``--what``)
====================
train
    tokens/s of a training step: forward + backward + clip (1.0) + AdamW.
    Ours is ``cllm_spec.model.forward_loss`` and ``backward`` on the whole batch,
    then ``cllm_spec.train.step.apply_update`` (the backend's
    ``clip_grad_norm`` and ``adamw_step``, with the weight-decay mask of
    ``optim.decay``, as ``cllm train`` calls them): the "model-API rate".
    PyTorch's is ``loss.backward()``, ``clip_grad_norm_`` and
    ``AdamW(fused=True)`` (the decayed tensors in one parameter group, the
    others in a group without decay). Bound: the FMA peak, with

        FLOP/token = 6 * N_mm + 12 * L * C * T,
        N_mm       = L * (4 C^2 + 2 C F) + V * C   (matrix weights, LM head incl.)

    (PaLM's count: 2 FLOP per weight per token forward, 4 backward; the
    attention scores and their weighted sum over all T keys, 4 L C T forward,
    twice that backward. LayerNorm, activations, softmax and AdamW are left
    out: they are not FMA work.)
e2e
    ``cllm train`` run as a subprocess for ``--e2e-steps`` steps (no
    evaluation, samples or checkpoints in between), on each byte-vocabulary
    config. tokens/s = the tokens of the steps after the first 3 over the sum
    of their times, from the per-step rows of its ``metrics.jsonl`` (each
    times one optimizer step as the trainer runs it: the 12-group split and
    tree reduction, clip, AdamW); start-up, data preparation and the final
    evaluation are not counted. One worker per thread (``parallel.workers``,
    what its default picks on a machine of that many cores). Set next to the
    model-API rate of the same config and thread count (``--e2e-steps``
    steps), measured in alternation.
decode
    batch 1, a 16-token prompt, 128 new tokens, greedy. Ours is
    ``cllm_spec.generate.generate`` (the path of ``cllm generate``, KV cache);
    torch eager runs ``peers_torch.TorchDecoder`` with its own KV cache.
    decode tokens/s = 128 / the time of the whole call; prefill tokens/s =
    16 / the time of a call for 1 new token (the prompt's forward and one
    argmax). The model's ``block_size`` is raised to 144 where it is smaller,
    so every token goes through the cache (no sliding window). Bound: the
    measured streaming-read bandwidth over the weight bytes a token must read,
    4 * (P - T_max * C + C) (every parameter except the unused position rows).
rss
    peak RSS (``ru_maxrss``) of a fresh process that builds the
    ``--rss-configs`` model and runs one training step, per contestant; the
    base column is the RSS after the imports, before the model exists.

Threads (``--threads``): the C backend's ``set_num_threads``, NumPy's BLAS
through threadpoolctl (its element-wise code is single-threaded), and
``torch.set_num_threads``. torch.compile compiles once per thread count (the
count is part of its code); compile time is excluded, as warm-up steps run
before the timed rounds. Each first training loss (initial weights) is checked
against the float64 NumPy loss with the project's ``model``/``loss`` tolerance;
a mismatch is reported and makes the exit status 1.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import peers_e2e  # noqa: E402
import peers_report  # noqa: E402
from peers_machine import Machine  # noqa: E402
from peers_models import (  # noqa: E402
    CONFIGS,
    DECODE_NEW,
    DECODE_PROMPT,
    Bench,
    check_loss,
    decode_config,
    make_decoder,
    make_trainer,
    reference_loss,
    set_threads,
)

CONTESTANTS = ("c", "numpy", "torch", "torch.compile")
WHAT = ("train", "e2e", "decode", "rss")
PRODUCTION_ROUNDS = 3  # at most, for the production config: its steps take seconds
PAUSE_S = 0.2  # idle before each turn: OpenBLAS and OpenMP threads spin after a call


# ---------------------------------------------------------------- timing ----
def alternate(
    turns: dict[str, Callable[[], Any]], rounds: int, threads: int | None
) -> dict[str, list[float]]:
    """``rounds`` rounds of every turn (rotating order); rates per contestant.

    A turn does its work and returns the work's size (tokens), or ``(size,
    seconds)`` when it times itself; its rate is size / seconds. With
    ``threads``, each contestant's thread count is set before its turn (torch
    and torch.compile share one setting).
    """
    names = list(turns)
    rates: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            if threads is not None:
                set_threads(name, threads)
            time.sleep(PAUSE_S)
            start = time.perf_counter()
            work = turns[name]()
            elapsed = time.perf_counter() - start
            if isinstance(work, tuple):  # the turn timed itself
                work, elapsed = work
            rates[name].append(work / elapsed)
    return rates


def _steps_for(seconds_per_step: float, target: float) -> int:
    return max(1, min(1000, round(target / max(seconds_per_step, 1e-6))))


def _rounds(args: argparse.Namespace, bench: Bench) -> int:
    return (
        min(args.repeat, PRODUCTION_ROUNDS)
        if bench.name == "production"
        else args.repeat
    )


def summary(rates: list[float]) -> dict[str, float]:
    return {"median": statistics.median(rates), "min": min(rates), "max": max(rates)}


# ----------------------------------------------------------------- train ----
def bench_train(args: argparse.Namespace, bench: Bench, out: dict[str, Any]) -> None:
    flat = bench.params()
    expected = reference_loss(bench, flat)
    for threads in args.threads:
        turns: dict[str, Callable[[], float]] = {}
        losses: dict[str, float] = {}
        for name in args.contestants:
            set_threads(name, threads)
            trainer = make_trainer(name, bench, flat)
            losses[name] = trainer.step()  # the initial weights' loss; compiles
            for _ in range(bench.warmup - 1):
                trainer.step()
            start = time.perf_counter()
            trainer.step()
            n = _steps_for(time.perf_counter() - start, args.sample_seconds)
            turns[name] = _train_turn(trainer, n, bench.tokens)
        rates = alternate(turns, _rounds(args, bench), threads)
        row = {name: summary(r) for name, r in rates.items()}
        out["train"].append({"config": bench.name, "threads": threads, "rates": row})
        for name, loss in losses.items():
            out["losses"].append(check_loss(bench.name, name, threads, loss, expected))
        _say(f"train {bench.name} x{threads}: " + peers_report.brief(row))


def _train_turn(trainer: Any, steps: int, tokens: int) -> Callable[[], float]:
    def turn() -> float:
        for _ in range(steps):
            trainer.step()
        return float(steps * tokens)

    return turn


# ---------------------------------------------------------------- decode ----
def bench_decode(args: argparse.Namespace, bench: Bench, out: dict[str, Any]) -> None:
    cfg = decode_config(bench)
    flat = bench.params(cfg)
    prompt = np.random.default_rng(7).integers(0, cfg.vocab_size, DECODE_PROMPT)
    names = [n for n in args.contestants if n != "torch.compile"]
    for threads in args.threads:
        decoders = {}
        tokens = {}
        for name in names:
            set_threads(name, threads)
            decoders[name] = make_decoder(name, cfg, flat)
            tokens[name] = decoders[name].generate(prompt, DECODE_NEW)  # warm-up
        rounds = _rounds(args, bench)
        dec = alternate(
            {n: _decode_turn(d, prompt, DECODE_NEW) for n, d in decoders.items()},
            rounds,
            threads,
        )
        pre = alternate(
            {
                n: _prefill_turn(d, prompt, args.sample_seconds)
                for n, d in decoders.items()
            },
            max(rounds, 5),
            threads,
        )
        ref = tokens.get("numpy", next(iter(tokens.values())))
        agree = {n: int(np.sum(t == ref)) for n, t in tokens.items()}
        out["decode"].append(
            {
                "config": bench.name,
                "threads": threads,
                "decode": {n: summary(r) for n, r in dec.items()},
                "prefill": {n: summary(r) for n, r in pre.items()},
                "agree_with_numpy": agree,
            }
        )
        _say(
            f"decode {bench.name} x{threads}: "
            + peers_report.brief({n: summary(r) for n, r in dec.items()})
            + f"; tokens equal to numpy's: {agree}"
        )


def _decode_turn(decoder: Any, prompt: np.ndarray, new: int) -> Callable[[], float]:
    def turn() -> float:
        decoder.generate(prompt, new)
        return float(new)

    return turn


def _prefill_turn(
    decoder: Any, prompt: np.ndarray, seconds: float
) -> Callable[[], float]:
    """Enough prefills in a row to take about ``seconds`` (they are short)."""
    start = time.perf_counter()
    decoder.prefill(prompt)
    calls = _steps_for(time.perf_counter() - start, seconds)

    def turn() -> float:
        for _ in range(calls):
            decoder.prefill(prompt)
        return float(calls * prompt.size)

    return turn


# ------------------------------------------------------------------- e2e ----
def bench_e2e(args: argparse.Namespace, bench: Bench, out: dict[str, Any]) -> None:
    if not bench.byte_vocab:
        return  # cllm train's byte tokenizer fixes V; the others need a corpus
    flat = bench.params()
    for threads in args.threads:
        for name in [n for n in args.contestants if n in ("c", "numpy")]:
            set_threads(name, threads)
            api = make_trainer(name, bench, flat)
            api.step()
            turns = {
                "cllm train": _e2e_turn(bench, name, threads, args.e2e_steps),
                "model API": _train_turn(api, args.e2e_steps, bench.tokens),
            }
            rates = alternate(turns, min(args.repeat, 3), None)
            row = {k: summary(v) for k, v in rates.items()}
            out["e2e"].append(
                {"config": bench.name, "threads": threads, "backend": name, **row}
            )
            _say(f"e2e {bench.name} {name} x{threads}: " + peers_report.brief(row))


def _e2e_turn(
    bench: Bench, name: str, threads: int, steps: int
) -> Callable[[], tuple[float, float]]:
    def turn() -> tuple[float, float]:
        return peers_e2e.run_train(bench, name, threads, steps)

    return turn


# ------------------------------------------------------------------- rss ----
def bench_rss(args: argparse.Namespace, out: dict[str, Any]) -> None:
    for config in args.rss_configs:
        for name in args.contestants:
            row = peers_e2e.rss_of_step(config, name, max(args.threads))
            out["rss"].append({"config": config, "contestant": name, **row})
            _say(f"rss {config} {name}: {row}")


# ------------------------------------------------------------------ main ----
def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _csv(choices: tuple[str, ...]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        items = [s.strip() for s in text.split(",") if s.strip()]
        bad = [s for s in items if s not in choices]
        if bad or not items:
            raise argparse.ArgumentTypeError(
                f"expected some of {choices}, got {text!r}"
            )
        return items

    return parse


def _threads(text: str) -> list[int]:
    try:
        values = [int(s) for s in text.split(",")]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected ints >= 1, got {text!r}")
    return values


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="c vs numpy vs torch vs torch.compile on the same model",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("Figures", 1)[1] if __doc__ else None,
    )
    p.add_argument("--configs", type=_csv(tuple(CONFIGS)), default=list(CONFIGS))
    p.add_argument("--threads", type=_threads, default=[1, 2])
    p.add_argument("--contestants", type=_csv(CONTESTANTS), default=list(CONTESTANTS))
    p.add_argument("--what", type=_csv(WHAT), default=list(WHAT))
    p.add_argument("--repeat", type=int, default=5, help="rounds (production: <= 3)")
    p.add_argument(
        "--sample-seconds",
        type=float,
        default=0.5,
        help="work per turn: steps are chosen to take about this long",
    )
    p.add_argument("--e2e-steps", type=int, default=30)
    p.add_argument("--rss-configs", type=_csv(tuple(CONFIGS)), default=["production"])
    p.add_argument("--bw-mib", type=int, default=1024, help="bandwidth array size")
    p.add_argument("--markdown", action="store_true", help="tables for RESULTS.md")
    p.add_argument("--json", metavar="PATH", help="also write every number here")
    p.add_argument(
        "--from-json",
        metavar="PATH",
        nargs="+",
        type=Path,
        help="measure nothing: print (or write) the tables of earlier --json "
        "files (several: parts of one benchmark, merged)",
    )
    p.add_argument(
        "--write-results",
        metavar="RESULTS.md",
        type=Path,
        help="put the Markdown tables into this file's peer section (markers)",
    )
    p.add_argument(
        "--rss-child", nargs=2, metavar=("CONFIG", "CONTESTANT"), help=argparse.SUPPRESS
    )
    args = p.parse_args(argv)
    if args.repeat < 1 or args.e2e_steps < 4:
        p.error("--repeat must be >= 1 and --e2e-steps >= 4")
    return args


def measure_machine(args: argparse.Namespace, info: dict[str, Any]) -> None:
    """Measure the bounds into ``info``, keeping the best of this and any
    earlier measurement (the run measures at its start and its end, so that
    a moment of load on the shared machine does not lower the roof)."""
    machine = Machine()
    info["isa"] = machine.isa
    for key, fn in (
        ("fma_gflops", machine.fma_gflops),
        ("read_gbs", lambda t: machine.read_gbs(t, args.bw_mib)),
    ):
        best = info.setdefault(key, {})
        for t in args.threads:
            best[t] = max(best.get(t, 0.0), fn(t))
    _say(f"machine: {info}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.rss_child:
        return peers_e2e.rss_child(*args.rss_child, max(args.threads))
    if args.from_json:
        return report(args, peers_report.load(args.from_json))
    out: dict[str, Any] = {
        "args": {k: v for k, v in vars(args).items() if k != "rss_child"},
        "env": peers_report.environment(args.contestants),
        "train": [],
        "losses": [],
        "e2e": [],
        "decode": [],
        "rss": [],
    }
    started = time.perf_counter()
    out["machine"] = {}
    measure_machine(args, out["machine"])

    def save() -> None:  # after every figure, so a long run leaves what it did
        out["env"]["load_after"] = os.getloadavg()
        out["seconds"] = time.perf_counter() - started
        if args.json:
            Path(args.json).write_text(json.dumps(out, indent=1, default=str))

    for config in args.configs:
        bench = CONFIGS[config]
        for what, run in (("train", bench_train), ("e2e", bench_e2e)):
            if what in args.what:
                run(args, bench, out)
                save()
        if "decode" in args.what:
            bench_decode(args, bench, out)
            save()
    if "rss" in args.what:
        bench_rss(args, out)
    measure_machine(args, out["machine"])
    save()
    return report(args, out)


def report(args: argparse.Namespace, out: dict[str, Any]) -> int:
    """Print the tables (and write them into RESULTS.md when asked); the exit
    status is 1 when a contestant's first loss missed the reference."""
    print(peers_report.render(out, markdown=args.markdown))
    if args.write_results:
        peers_report.write_results(args.write_results, peers_report.render(out, True))
    bad = [row for row in out["losses"] if not row["ok"]]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
