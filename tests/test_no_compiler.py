"""An install made without a working C compiler (tox env ``nocc``: ``CC=false``).

Run only in that environment: the tests env ignores this file, because where
the C extension is built every assertion below is false on purpose.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

CLLM = [sys.executable, "-m", "cllm_spec.cli"]
TINY = [
    "--set", "data.tokenizer=byte", "--set", "model.n_embd=16",
    "--set", "model.n_layer=1", "--set", "model.n_head=2",
    "--set", "model.block_size=16", "--set", "train.seq_len=16",
    "--set", "train.batch_size=4", "--set", "train.steps=3",
    "--set", "schedule.warmup_steps=1", "--set", "train.eval_every=0",
    "--set", "train.sample_every=0", "--set", "train.checkpoint_every=0",
]  # fmt: skip


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLLM, *args], capture_output=True, text=True, timeout=300, check=False
    )


def test_the_extension_was_not_built() -> None:
    spec = importlib.util.find_spec("cllm_c")  # finds the package, imports nothing
    assert spec is not None and spec.submodule_search_locations
    package = Path(next(iter(spec.submodule_search_locations)))
    assert (package / "__init__.py").is_file()  # the package installed
    assert not list(package.glob("_ffi*"))  # its extension did not


def test_backends_lists_c_as_unavailable_with_reason_and_fix() -> None:
    out = run("backends")
    assert out.returncode == 0, out.stderr
    line = next(x for x in out.stdout.splitlines() if x[2:].startswith("c "))
    assert "unavailable" in line and "not built" in line
    assert "fix: install a C compiler" in out.stdout
    assert any(x.startswith("* numpy") for x in out.stdout.splitlines())
    rows = {r["name"]: r for r in json.loads(run("backends", "--json").stdout)}
    assert rows["c"]["available"] is False and "C compiler" in rows["c"]["fix"]
    assert rows["numpy"]["available"] is True


def test_train_with_backend_c_says_the_same(tmp_path: Path) -> None:
    out = run("train", "--backend", "c", *TINY, "--set", f"train.out_dir={tmp_path}")
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert "not built" in out.stderr and "install a C compiler" in out.stderr


def test_default_train_runs_on_numpy(tmp_path: Path) -> None:
    out = run("train", *TINY, "--set", f"train.out_dir={tmp_path / 'run'}")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("backend numpy ")
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").open()]
    assert [r["step"] for r in rows if r["kind"] == "train"] == [1, 2, 3]
