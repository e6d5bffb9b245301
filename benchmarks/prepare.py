"""Time and peak memory of data preparation (``prepare_data``) on a large corpus.

The corpus is the bundled one (``cllm_spec/data/corpus/*.txt``) repeated to
``--size-mib`` MiB (200 by default) in one file. Each measurement is a fresh
Python process that loads the default run config with ``data.corpus`` set to
that file and ``data.tokenizer`` set to byte or word (word: the default
``data.vocab_size`` of 4096), and calls
:func:`cllm_spec.train.prepare.prepare_data` once, writing ``dataset.bin``,
``tokenizer.json`` and ``dataset.json`` into a temporary run directory, exactly
as ``cllm train`` does before its first step. Reported per process:

- ``seconds``: wall time of the ``prepare_data`` call (imports excluded);
- ``peak RSS``: the process's ``ru_maxrss`` at the end, and ``RSS before``: its
  ``ru_maxrss`` after the imports, just before the call, so that the growth is
  what preparation needed.

``--source DIR`` (repeatable) also measures the code of another checkout (its
``cllm_spec`` imported before the installed one; each line names the package
that ran), to compare with an earlier version on the same corpus. Rounds are
interleaved (this checkout byte, word, then each source byte, word; then the
next round) so that a change in the machine's load hits all alike; the table
gives the median of the rounds.

    python benchmarks/prepare.py                    # 200 MiB, 3 rounds
    python benchmarks/prepare.py --size-mib 50 --rounds 1 --markdown
    git archive c5f17a9 cllm_spec | tar -x -C /tmp/before
    python benchmarks/prepare.py --source /tmp/before --markdown

The load average is printed before and after: the machine may be shared.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

import cllm_spec
from cllm_spec.data import default_corpus_path

MIB = 1 << 20

# Runs in the child process: prepare once, print one JSON line.
CHILD = """
import json, resource, sys, tempfile, time
from pathlib import Path
if len(sys.argv) > 3:  # --source: its cllm_spec before the installed (editable) one
    import importlib.machinery
    sys.path.insert(0, sys.argv[3])
    sys.meta_path.insert(0, importlib.machinery.PathFinder)
import cllm_spec
from cllm_spec.train.config import load_config
from cllm_spec.train.prepare import prepare_data

corpus, tokenizer = sys.argv[1], sys.argv[2]
cfg = load_config(None, [f"data.corpus={corpus}", f"data.tokenizer={tokenizer}"])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
with tempfile.TemporaryDirectory() as out:
    start = time.perf_counter()
    data = prepare_data(cfg, Path(out) / "run")
    seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": seconds, "rss_before_kib": before, "peak_rss_kib": peak,
                  "n_tokens": int(data.train.size + data.val.size),
                  "code": cllm_spec.__file__}))
"""


def make_corpus(path: Path, size_mib: int) -> int:
    """Write the bundled corpus files repeated to ``size_mib`` MiB; the size."""
    texts = [p.read_bytes() for p in sorted(default_corpus_path().parent.glob("*.txt"))]
    unit = b"\n".join(texts) + b"\n"
    want = size_mib * MIB
    with path.open("wb") as fh:
        written = 0
        while written < want:
            piece = unit[: want - written]
            fh.write(piece)
            written += len(piece)
    return written


def measure(corpus: Path, tokenizer: str, source: str | None) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(corpus), tokenizer, *filter(None, [source])],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise SystemExit(f"{tokenizer}: the child failed:\n{result.stderr}")
    row: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return row


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} / {five:.2f} / {fifteen:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokenizers", nargs="+", default=["byte", "word"])
    parser.add_argument(
        "--source",
        action="append",
        default=[],
        help="also measure this checkout's cllm_spec (repeatable)",
    )
    parser.add_argument("--markdown", action="store_true", help="a table for RESULTS")
    args = parser.parse_args()

    this = f"this checkout (cllm {cllm_spec.__version__})"
    codes: list[str | None] = [None, *args.source]
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, "
        f"{platform.system()} {platform.release()}; Python "
        f"{platform.python_version()}, numpy {np.__version__}"
    )
    print(f"load average before: {load()} (1/5/15 min)")
    rows: dict[tuple[str, str], list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.txt"
        size = make_corpus(corpus, args.size_mib)
        print(f"corpus: {size:,} bytes ({size / MIB:.0f} MiB)")
        for r in range(args.rounds):
            for source in codes:
                for tokenizer in args.tokenizers:
                    row = measure(corpus, tokenizer, source)
                    rows.setdefault((source or this, tokenizer), []).append(row)
                    print(
                        f"round {r + 1} {tokenizer:>5}: {row['seconds']:7.2f} s, "
                        f"peak RSS {row['peak_rss_kib'] / 1024:7.1f} MiB (before "
                        f"{row['rss_before_kib'] / 1024:.1f} MiB), "
                        f"{row['n_tokens']:,} tokens; {row['code']}",
                        flush=True,
                    )
    print(f"load average after: {load()} (1/5/15 min)")
    if args.markdown:
        print(
            "\n| code | tokenizer | seconds (median) | runs | peak RSS (median) "
            "| RSS before |"
        )
        print("| --- | --- | ---: | --- | ---: | ---: |")
        for (code, tokenizer), runs in rows.items():
            secs = [r["seconds"] for r in runs]
            peak = statistics.median(r["peak_rss_kib"] for r in runs) / 1024
            before = statistics.median(r["rss_before_kib"] for r in runs) / 1024
            print(
                f"| {code} | {tokenizer} | {statistics.median(secs):.1f} | "
                f"{', '.join(f'{s:.1f}' for s in secs)} | {peak:,.0f} MiB | "
                f"{before:.0f} MiB |"
            )


if __name__ == "__main__":
    main()
