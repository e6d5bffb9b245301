"""Tables of the peer benchmark: plain text, or Markdown ready for RESULTS.md."""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from peers_models import (
    CONFIGS,
    decode_bytes_per_token,
    decode_config,
    train_flop_per_token,
)

TRAIN_ORDER = ("c", "numpy", "torch", "torch.compile")
BEGIN = "<!-- peers.py --markdown: begin -->"
END = "<!-- peers.py --markdown: end -->"


def environment(contestants: Sequence[str]) -> dict[str, Any]:
    """What the numbers were measured on (machine, versions, load at start)."""
    from cllm_spec.registry import get_backend

    env: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": _cpu_model(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "load_before": os.getloadavg(),
        "commit": _commit(),
    }
    if "c" in contestants:
        c = get_backend("c")
        env["c_backend"] = getattr(c, "build_info", dict)()
    if any(n.startswith("torch") for n in contestants):
        import peers_torch

        env["torch"] = peers_torch.version()
    return env


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _commit() -> str:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
        )
    except OSError:
        return "unknown"
    return done.stdout.strip() or "unknown"


# ------------------------------------------------------------- numbers -----
def rate(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:,.0f}" if x >= 100 else f"{x:.1f}"


def ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or b is None or b == 0 else f"{a / b:.2f}"


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f}%" if x >= 0.1 else f"{100 * x:.1f}%"


def brief(row: dict[str, dict[str, float]]) -> str:
    """One line of medians (and ranges) for the progress log."""
    return ", ".join(
        f"{n} {rate(v['median'])} [{rate(v['min'])}-{rate(v['max'])}]"
        for n, v in row.items()
    )


def _median(row: dict[str, dict[str, float]], name: str) -> float | None:
    return row[name]["median"] if name in row else None


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], markdown: bool) -> str:
    """A Markdown table (numbers right-aligned) or aligned plain text."""
    if markdown:
        align = ["---"] + ["---:"] * (len(headers) - 1)
        lines = [headers, align, *rows]
        return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)
    widths = [
        max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))
    ]
    return "\n".join(
        "  ".join(str(c).rjust(w) for c, w in zip(r, widths, strict=True))
        for r in [headers, *rows]
    )


# -------------------------------------------------------------- sections ----
def render(out: dict[str, Any], markdown: bool) -> str:
    order = list(CONFIGS)
    for figure in ("train", "e2e", "decode"):  # merged parts come in run order
        out[figure].sort(key=lambda r: (order.index(r["config"]), r["threads"]))
    parts = [_header(out), _machine(out, markdown)]
    for section in (_losses, _train, _train_bound, _e2e, _decode, _prefill, _rss):
        text = section(out, markdown)
        if text:
            parts.append(text)
    return "\n\n".join(parts) + "\n"


def _header(out: dict[str, Any]) -> str:
    env = out["env"]
    load = " / ".join(
        ", ".join(f"{x:.2f}" for x in env[k]) for k in ("load_before", "load_after")
    )
    lines = [
        f"Measured {env['date']} at commit {env['commit']} in "
        f"{out['seconds'] / 60:.1f} min.",
        f"Machine: {env['cpu']}, {env['cpus']} CPUs; load average (1, 5, 15 min) "
        f"before / after: {load}.",
        f"Python {env['python']}, NumPy {env['numpy']}"
        + (f", {env['torch']}" if "torch" in env else "")
        + (f"; C backend {env['c_backend']}" if "c_backend" in env else "")
        + ".",
    ]
    return "\n".join(lines)


def _machine(out: dict[str, Any], markdown: bool) -> str:
    m = out["machine"]
    rows = [
        [str(t), f"{m['fma_gflops'][t]:.0f}", f"{m['read_gbs'][t]:.1f}"]
        for t in m["fma_gflops"]
    ]
    head = f"Measured bounds ({m['isa']} FMA chains; streaming read of a large array):"
    return (
        head + "\n\n" + table(["threads", "FMA GFLOP/s", "read GB/s"], rows, markdown)
    )


def _losses(out: dict[str, Any], markdown: bool) -> str:
    if not out["losses"]:
        return ""
    names = [n for n in TRAIN_ORDER if any(r["contestant"] == n for r in out["losses"])]
    by_config: dict[str, list[dict[str, Any]]] = {}
    for r in out["losses"]:
        by_config.setdefault(r["config"], []).append(r)
    rows = []
    for config, found in by_config.items():
        cells = [config, f"{found[0]['expected']:.7f}"]
        for n in names:
            errs = [r["rel_err"] for r in found if r["contestant"] == n]
            cells.append(f"{max(errs):.1e}" if errs else "-")
        cells.append("yes" if all(r["ok"] for r in found) else "NO")
        rows.append(cells)
    head = (
        "First training loss (initial weights): the largest relative error, over "
        "the thread counts, against the float64 NumPy loss; ok = all within the "
        "project's model/loss float32 tolerance:"
    )
    return head + "\n\n" + table(["config", "float64", *names, "ok"], rows, markdown)


def _present(out: dict[str, Any], key: str) -> list[str]:
    names = {n for r in out[key] for n in r["rates"]} if key == "train" else set()
    return [n for n in TRAIN_ORDER if n in names]


def _train(out: dict[str, Any], markdown: bool) -> str:
    if not out["train"]:
        return ""
    names = _present(out, "train")
    others = [n for n in names if n != "c"]
    rows = []
    for r in out["train"]:
        row = r["rates"]
        cells = [r["config"], str(r["threads"])]
        cells += [rate(_median(row, n)) for n in names]
        if "c" in names:
            cells += [ratio(_median(row, "c"), _median(row, n)) for n in others]
        rows.append(cells)
    cols = ["config", "threads", *names]
    if "c" in names:
        cols += [f"c/{n}" for n in others]
    head = "Training tokens/s (forward + backward + clip + AdamW, float32; medians):"
    return head + "\n\n" + table(cols, rows, markdown)


def _train_bound(out: dict[str, Any], markdown: bool) -> str:
    if not out["train"]:
        return ""
    names = _present(out, "train")
    peak = out["machine"]["fma_gflops"]
    rows = []
    for r in out["train"]:
        bench = CONFIGS[r["config"]]
        flop = train_flop_per_token(bench)
        bound = peak[r["threads"]] * 1e9 / flop
        cells = [r["config"], str(r["threads"]), f"{flop / 1e6:.2f}", rate(bound)]
        cells += [pct(_frac(_median(r["rates"], n), bound)) for n in names]
        rows.append(cells)
    cols = ["config", "threads", "MFLOP/token", "FMA-bound tok/s", *names]
    head = "Training as a fraction of the FMA bound (measured peak / FLOP per token):"
    return head + "\n\n" + table(cols, rows, markdown)


def _frac(x: float | None, bound: float) -> float | None:
    return None if x is None else x / bound


def _e2e(out: dict[str, Any], markdown: bool) -> str:
    if not out["e2e"]:
        return ""
    rows = [
        [
            r["config"],
            str(r["threads"]),
            r["backend"],
            rate(r["cllm train"]["median"]),
            rate(r["model API"]["median"]),
            ratio(r["cllm train"]["median"], r["model API"]["median"]),
        ]
        for r in out["e2e"]
    ]
    cols = [
        "config",
        "threads",
        "backend",
        "cllm train tok/s",
        "model API tok/s",
        "ratio",
    ]
    head = "`cllm train` end to end against the model API, same config and threads:"
    return head + "\n\n" + table(cols, rows, markdown)


def _decode_names(out: dict[str, Any]) -> list[str]:
    names = {n for r in out["decode"] for n in r["decode"]}
    return [n for n in TRAIN_ORDER if n in names]


def _decode(out: dict[str, Any], markdown: bool) -> str:
    if not out["decode"]:
        return ""
    names = _decode_names(out)
    bw = out["machine"]["read_gbs"]
    rows = []
    for r in out["decode"]:
        cfg = decode_config(CONFIGS[r["config"]])
        per_token = decode_bytes_per_token(cfg)
        bound = bw[r["threads"]] * 1e9 / per_token
        row = r["decode"]
        cells = [r["config"], str(r["threads"])]
        cells += [rate(_median(row, n)) for n in names]
        cells += [ratio(_median(row, "c"), _median(row, "torch"))]
        cells += [f"{per_token / 1e6:.2f}", rate(bound)]
        cells += [pct(_frac(_median(row, n), bound)) for n in names]
        agree = r["agree_with_numpy"]
        cells += [" / ".join(str(agree[n]) for n in names if n in agree)]
        rows.append(cells)
    cols = ["config", "threads", *names, "c/torch", "MB/token", "bound tok/s"]
    cols += [f"{n} of bound" for n in names]
    cols += ["tokens = numpy's"]
    head = (
        "Decoding tokens/s (batch 1, 16-token prompt, 128 new tokens, greedy, "
        "KV cache); bound = read bandwidth / weight bytes per token; the last "
        "column counts the greedy tokens equal to numpy's, per contestant:"
    )
    return head + "\n\n" + table(cols, rows, markdown)


def _prefill(out: dict[str, Any], markdown: bool) -> str:
    if not out["decode"]:
        return ""
    names = _decode_names(out)
    rows = []
    for r in out["decode"]:
        row = r["prefill"]
        cells = [r["config"], str(r["threads"])]
        cells += [rate(_median(row, n)) for n in names]
        cells += [ratio(_median(row, "c"), _median(row, "torch"))]
        rows.append(cells)
    head = "Prefill tokens/s (the 16-token prompt and its first new token):"
    return (
        head + "\n\n" + table(["config", "threads", *names, "c/torch"], rows, markdown)
    )


def _rss(out: dict[str, Any], markdown: bool) -> str:
    if not out["rss"]:
        return ""
    rows = [
        [
            r["config"],
            r["contestant"],
            f"{r['base']:.0f}",
            f"{r['ready']:.0f}",
            f"{r['step1']:.0f}",
            f"{r['step2']:.0f}",
        ]
        for r in out["rss"]
    ]
    cols = ["config", "contestant", "after imports", "model built", "step 1", "step 2"]
    head = (
        "Peak RSS (MiB) of a training step, each contestant in a fresh process "
        "(step 1 includes torch.compile's compilation):"
    )
    return head + "\n\n" + table(cols, rows, markdown)


FIGURES = ("train", "losses", "e2e", "decode", "rss")


def load(paths: Sequence[Path]) -> dict[str, Any]:
    """``--json`` files as ``main`` built them, merged into one report.

    Several files (runs of parts of the benchmark, one after another) give
    their rows in order, the best bounds of any, the environment of the first
    with the load after the last, and the sum of their times.
    """
    merged: dict[str, Any] = {}
    for path in paths:
        out = json.loads(path.read_text())
        for key in ("fma_gflops", "read_gbs"):  # JSON made the thread keys str
            out["machine"][key] = {int(t): v for t, v in out["machine"][key].items()}
        if not merged:
            merged = out
            continue
        for figure in FIGURES:
            merged[figure] += out[figure]
        for key in ("fma_gflops", "read_gbs"):
            best = merged["machine"][key]
            for t, v in out["machine"][key].items():
                best[t] = max(best.get(t, 0.0), v)
        merged["env"]["load_after"] = out["env"]["load_after"]
        merged["seconds"] += out["seconds"]
    return merged


def write_results(path: Path, text: str) -> None:
    """Replace the measured part of RESULTS.md's peer section with ``text``:
    everything between the BEGIN and END markers (which must be there)."""
    doc = path.read_text()
    head, begin, rest = doc.partition(BEGIN)
    _, end, tail = rest.partition(END)
    if not begin or not end:
        raise SystemExit(f"{path}: no {BEGIN} ... {END} block to replace")
    path.write_text(head + BEGIN + "\n\n" + text.strip() + "\n\n" + END + tail)
