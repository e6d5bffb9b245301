"""Hostile checkpoint files (spec: ``cllm_spec.checkpoint``, "Limits").

The SHA-256 of a checkpoint is a checksum, not a signature: these files are
built by editing the metadata and re-signing it as the writer does
(``forge``), or by writing headers no writer would. Each must be refused with
a CheckpointError, quickly and in bounded memory (at most 200 MB plus 3x the
file's size on disk), or load with values every command can use.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cllm_spec import checkpoint as ck
from cllm_spec import checkpoint_format as fmt
from cllm_spec.cli import main
from cllm_spec.errors import CheckpointError
from cllm_spec.model import ModelConfig, param_shapes
from tests.checkpoint_helpers import expect_rejected, forge, training_state
from tests.test_cli_generate import assert_clean_error

ROOT = Path(__file__).parent.parent
MB = 2**20


def nested(depth: int, leaf: Any = 1.0) -> Any:
    value = leaf
    for _ in range(depth):
        value = {"a": value}
    return value


def signed_meta(**overrides: Any) -> dict[str, str]:
    """The __metadata__ of training_state() with JSON values replaced, before
    its checksum is added."""
    _, metadata = training_state()
    meta = ck._encode_metadata(metadata)
    meta.update({k: json.dumps(v) for k, v in overrides.items()})
    return meta


def write_raw(path: Path, header: bytes, apparent_size: int | None = None) -> Path:
    """``header`` behind its length; ``apparent_size`` extends the file with a
    hole (a sparse file: zeros that take no disk)."""
    path.write_bytes(len(header).to_bytes(8, "little") + header)
    if apparent_size is not None:
        os.truncate(path, apparent_size)
    return path


# ------------------------------------------------------------- special files ---
def load_in_child(
    path: Path, timeout: float = 60, limit: int = 1024 * MB
) -> tuple[str, int, float]:
    """``(outcome, peak RSS in bytes, seconds)`` of ``ck.load(path)`` in a fresh
    interpreter, whose address space may grow by ``limit`` bytes after its
    imports: a loader gone wrong fails there (MemoryError) instead of taking
    the machine's memory."""
    script = textwrap.dedent(
        f"""
        import resource, sys, time
        sys.path.insert(0, {str(ROOT)!r})
        from cllm_spec import checkpoint as ck
        from cllm_spec.errors import CheckpointError
        vm = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status")
                  if line.startswith("VmSize:"))
        cap = vm + {limit}
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
        begin = time.perf_counter()
        try:
            ck.load({str(path)!r})
            outcome = "loaded"
        except CheckpointError as exc:
            outcome = "refused: " + exc.message
        seconds = time.perf_counter() - begin
        # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the forked
        # parent (the test process) across exec.
        peak = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status")
                    if line.startswith("VmHWM:"))
        print(repr((outcome, peak, seconds)))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, result.stderr[-3000:]
    outcome, peak, seconds = eval(result.stdout.strip().splitlines()[-1])
    return outcome, peak, seconds


@pytest.mark.parametrize("kind", ["fifo", "device", "directory"])
def test_special_files_are_refused_before_reading(tmp_path: Path, kind: str) -> None:
    if kind == "fifo":
        path = tmp_path / "ckpt.safetensors"
        os.mkfifo(path)  # reading would wait for a writer forever
        words = "a FIFO"
    elif kind == "device":
        path, words = Path("/dev/zero"), "a character device"  # never ends
    else:
        path, words = tmp_path, "a directory"
    outcome, _, _ = load_in_child(path, timeout=30)
    assert outcome.startswith("refused: ") and words in outcome, outcome
    with pytest.raises(CheckpointError, match="not a regular file") as info:
        ck.load(path)
    assert info.value.hint_text


@pytest.mark.parametrize(
    "content",
    [
        b"The cat sat on the mat.\nThe dog sat on the log.\n",
        b'{"model": {"n_layer": 2}}\n',  # a JSON config given by mistake
        b"\x89PNG\r\n\x1a\n" + bytes(range(256)),
        b'[1, 2, 3, "{"]     ',
    ],
    ids=["text", "json", "png", "json-array"],
)
def test_a_file_that_is_not_a_checkpoint_says_so(
    tmp_path: Path, content: bytes
) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="not a CLLM checkpoint") as info:
        ck.load(path)
    assert "header length" not in info.value.message
    assert "checkpoint written by cllm" in info.value.hint_text
    code = main(["info", str(path)])
    assert code == 2


# ------------------------------------------------------------ header limits ---
def test_the_header_is_bounded_in_entries_depth_and_items(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    meta = signed_meta() | {"sha256": "0" * 64}
    empty = {"data_offsets": [0, 0], "dtype": "F32", "shape": [0]}
    entries = {f"t{i}": empty for i in range(11)}
    header = json.dumps({"__metadata__": meta, **entries}).encode()
    monkeypatch.setattr(fmt, "MAX_TENSORS", 10)
    expect_rejected(tmp_path / "e", _framed(header), "11 tensors, more than the 10")
    monkeypatch.setattr(fmt, "MAX_JSON_ITEMS", 50)
    expect_rejected(tmp_path / "i", _framed(header), "more than 50 JSON items")
    for depth in (40, 200_000):  # deeper than json.loads can recurse
        deep = b'{"__metadata__": ' + b"[" * depth + b"]" * depth + b"}"
        expect_rejected(tmp_path / "d", _framed(deep), "nested more than 32 levels")


def _framed(header: bytes) -> bytes:
    return len(header).to_bytes(8, "little") + header


def test_header_bytes_outside_printable_ascii_are_refused(
    saved_bytes: bytes, tmp_path: Path
) -> None:
    n = int.from_bytes(saved_bytes[:8], "little")
    header = saved_bytes[8 : 8 + n]
    bad = header.replace(b'"F32"', b'"F\xc3\xa932"', 1)  # UTF-8, never written
    data = _framed(bad) + saved_bytes[8 + n :]
    expect_rejected(tmp_path / "u", data, "not printable ASCII")


@pytest.fixture(scope="module")
def saved_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    tensors, metadata = training_state()
    return ck.encode(tensors, metadata)


def test_a_read_error_is_a_checkpoint_error(
    saved_bytes: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "c.safetensors"
    path.write_bytes(saved_bytes)
    real = fmt.open_regular

    class FailingDisk:  # the header reads, the tensor data does not (EIO)
        def __init__(self, fh: Any) -> None:
            self.fh = fh

        def seek(self, offset: int) -> int:
            return int(self.fh.seek(offset))

        def readinto(self, out: Any) -> int:
            if self.fh.tell() > len(saved_bytes) // 2:
                raise OSError(errno.EIO, "Input/output error")
            return int(self.fh.readinto(out))

        def __enter__(self) -> FailingDisk:
            return self

        def __exit__(self, *exc: object) -> None:
            self.fh.close()

    def failing(*args: Any) -> tuple[Any, int]:
        fh, size = real(*args)
        return FailingDisk(fh), size

    monkeypatch.setattr(fmt, "open_regular", failing)
    with pytest.raises(CheckpointError, match="cannot be read: .*Input/output"):
        ck.load(path)


# --------------------------------------------------------- metadata schema ---
@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"metrics": [1.5, 2.5]}, "metadata.metrics: expected an object"),
        ({"metrics": nested(900)}, "metadata.metrics: JSON nested more than 32"),
        ({"metrics": nested(3)}, r"metadata.metrics.a: expected scalars or rows"),
        ({"metrics": {"train": 5}}, "metadata.metrics.train: expected null or a row"),
        ({"metrics": {"eval": {"val_loss": "low"}}}, "metadata.metrics.eval"),
        ({"scheduler": nested(900)}, "metadata.scheduler: JSON nested"),
        ({"scheduler": {"warmup_steps": [1]}}, "metadata.scheduler.warmup_steps"),
        ({"scheduler": "cosine"}, "metadata.scheduler: expected an object"),
        ({"data_cursor": [1, 2]}, "metadata.data_cursor"),
        ({"data_cursor": {"epoch": {"n": 1}}}, "metadata.data_cursor.epoch"),
        (
            {"optimizer": {"name": "adamw", "hyperparameters": [], "step": 7}},
            "metadata.optimizer.hyperparameters: expected an object",
        ),
        (
            {
                "optimizer": {
                    "name": "adamw",
                    "hyperparameters": {"betas": [[0.9]]},
                    "step": 7,
                }
            },
            "metadata.optimizer.hyperparameters.betas",
        ),
        ({"optimizer": {"name": "adamw", "hyperparameters": {}, "step": True}}, "step"),
        ({"optimizer": {"name": [], "hyperparameters": {}, "step": 1}}, "name"),
        ({"tokenizer": ["word"]}, "metadata.tokenizer"),
        ({"tokenizer": {"kind": 3}}, "metadata.tokenizer"),
        ({"rng_state": [1, 2]}, "metadata.rng_state"),
        ({"run": "numpy"}, "metadata.run: expected null or an object"),
        ({"run": {"backend": ["numpy"]}}, "metadata.run.backend: expected a string"),
        ({"run": {"step": -1}}, "metadata.run.step"),
        ({"run": {"config": {"model": [1]}}}, "metadata.run.config.model"),
        ({"run": {"config": nested(40, {})}}, "metadata.run: JSON nested"),
        (
            {"run": {"corpus": "/dev/zero"}},
            r"metadata.run: unknown key\(s\) \['corpus'\]",
        ),
    ],
)
def test_ill_typed_metadata_behind_a_valid_checksum(
    tmp_path: Path, overrides: dict[str, Any], match: str
) -> None:
    tensors, _ = training_state()
    encoded = {k: json.dumps(v) for k, v in overrides.items()}
    expect_rejected(tmp_path / "f", forge(tensors, encoded), match)


def test_well_typed_metadata_of_every_shape_loads(tmp_path: Path) -> None:
    tensors, _ = training_state()
    good = {
        "metrics": {
            "train": {"kind": "train", "step": 3, "loss": float("nan"), "lr": 1e-3},
            "eval": None,
            "note": "flat values are fine",
        },
        "run": {
            "backend": "numpy",
            "dtype": "float32",
            "config": {"model": {"n_layer": 2}, "optim": {"betas": [0.9, 0.95]}},
            "step": 7,
            "cllm_version": "0.1",
        },
        "scheduler": None,
        "data_cursor": {"epoch": 0, "batch": 3, "sha256": "ab"},
    }
    path = tmp_path / "ok.safetensors"
    path.write_bytes(forge(tensors, {k: json.dumps(v) for k, v in good.items()}))
    _, meta = ck.load(path)
    assert meta["run"] == good["run"] and meta["data_cursor"] == good["data_cursor"]
    assert np.isnan(meta["metrics"]["train"]["loss"])


def test_the_json_items_of_all_metadata_values_share_one_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tensors, _ = training_state()
    half = {"tokens": ["w"] * 400, "counts": [1] * 400}
    data = forge(
        tensors,
        {
            "tokenizer": json.dumps({"kind": "word", "version": 1, **half}),
            "data_cursor": json.dumps({f"k{i}": i for i in range(800)}),
        },
    )
    path = tmp_path / "b.safetensors"
    path.write_bytes(data)
    ck.load(path)
    monkeypatch.setattr(fmt, "MAX_JSON_ITEMS", 1600)  # each value alone fits
    with pytest.raises(CheckpointError, match="JSON items"):
        ck.load(path)


# ----------------------------------------------------------------- commands ---
@pytest.mark.parametrize("key", ["metrics", "scheduler"])
def test_info_on_deeply_nested_metadata_is_a_clean_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], key: str
) -> None:
    tensors, _ = training_state()
    path = tmp_path / "deep.safetensors"
    path.write_bytes(forge(tensors, {key: json.dumps(nested(900))}))
    code = main(["info", str(path)])
    assert_clean_error(code, capsys.readouterr().err, "info", f"metadata.{key}")


def test_resume_from_metrics_that_are_a_list_is_a_clean_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tensors, _ = training_state()
    path = tmp_path / "list.safetensors"
    path.write_bytes(forge(tensors, {"metrics": "[1.0, 2.0]"}))
    code = main(["train", "--resume", str(path)])
    assert_clean_error(code, capsys.readouterr().err, "train", "metadata.metrics")


# ------------------------------------------------------------ memory bounds ---
def within_bounds(path: Path, timeout: float = 60) -> str:
    """Load in a child; assert peak RSS <= 200 MB + 3x the size on disk."""
    on_disk = path.stat().st_blocks * 512
    bound = 200 * MB + 3 * on_disk
    outcome, peak, seconds = load_in_child(path, timeout, limit=bound)
    assert peak <= bound, f"{outcome}: peak RSS {peak / MB:.0f} MB > {bound / MB:.0f}"
    assert seconds < timeout / 2, f"{outcome}: {seconds:.1f} s"
    return outcome


def test_a_60_mb_header_of_a_million_empty_tensors(tmp_path: Path) -> None:
    # Finding 4: 2.6 GiB and 20-50 s before rejection.
    meta = signed_meta() | {"sha256": "0" * 64}
    head = json.dumps({"__metadata__": meta})[:-1]
    entry = ',"t{:07d}":{{"data_offsets":[0,0],"dtype":"F32","shape":[0]}}'
    body = "".join(entry.format(i) for i in range(1_000_000))
    path = write_raw(tmp_path / "many.safetensors", (head + body + "}").encode())
    assert path.stat().st_size > 60_000_000
    assert "more than 1,000,000 JSON items" in within_bounds(path)


def test_30_mib_of_empty_lists(tmp_path: Path) -> None:
    # Finding 4: 782 MiB. As the whole header, and as a value inside it.
    lists = b"[" + b"[]," * (10 * MB) + b"[]]"
    path = write_raw(tmp_path / "lists.safetensors", lists)
    assert "not a CLLM checkpoint" in within_bounds(path)
    inside = b'{"__metadata__":' + lists + b"}"
    path = write_raw(tmp_path / "inside.safetensors", inside)
    assert "JSON items" in within_bounds(path)


@pytest.mark.parametrize("gib", [1, 8])
def test_sparse_files_of_gigabytes_are_refused_without_reading_them(
    saved_bytes: bytes, tmp_path: Path, gib: int
) -> None:
    # Finding 4: 1 GiB sparse took 2 GiB, 8 GiB sparse raised MemoryError.
    # A real checkpoint followed by a hole: the tensors do not tile the file.
    grown = tmp_path / "grown.safetensors"
    grown.write_bytes(saved_bytes)
    os.truncate(grown, gib * 2**30)
    assert "tensor data covers" in within_bounds(grown)
    # A header declaring one tensor as large as the hole.
    n_floats = (gib * 2**30) // 4
    entry = {"data_offsets": [0, 4 * n_floats], "dtype": "F32", "shape": [n_floats]}
    meta = signed_meta() | {"sha256": "0" * 64}
    header = json.dumps({"__metadata__": meta, "model.wte.weight": entry}).encode()
    header += b" " * (-len(header) % 8)
    huge = write_raw(tmp_path / "huge.safetensors", header, 8 + len(header))
    os.truncate(huge, 8 + len(header) + 4 * n_floats)
    assert "missing tensors" in within_bounds(huge)
    # A header length that claims 90 MiB of the hole.
    hole = write_raw(tmp_path / "hole.safetensors", b"{", gib * 2**30)
    with open(hole, "r+b") as fh:
        fh.write((90 * MB).to_bytes(8, "little"))
    assert "not printable ASCII" in within_bounds(hole)


def test_a_consistent_sparse_file_is_checked_before_its_tensors_are_allocated(
    tmp_path: Path,
) -> None:
    # Every check of the header passes (a 256 MiB model, its exact tensors),
    # but the data is a hole and the checksum is made up: hashing the data
    # through one small buffer refuses it without taking 256 MiB.
    cfg = ModelConfig(vocab_size=2**20, n_embd=64, n_layer=1, n_head=1, block_size=8)
    meta = ck._encode_metadata({"model_config": cfg}) | {"sha256": "0" * 64}
    entries = [(n, "F32", list(s)) for n, s in sorted(param_shapes(cfg).items())]
    header = fmt.header_bytes(meta, entries)
    size = sum(4 * int(np.prod(s)) for _, _, s in entries)
    assert size > 256 * MB
    path = tmp_path / "big.safetensors"
    path.write_bytes(header)
    os.truncate(path, len(header) + size)
    assert "checksum mismatch" in within_bounds(path, timeout=120)
