"""``cllm eval``, ``cllm info`` and ``cllm plot`` on checkpoints and logs built here."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import numpy as np
import pytest

from cllm_spec.cli import main
from cllm_spec.commands.evaluate import windows
from cllm_spec.commands.info import checkpoint_step
from cllm_spec.commands.plot import parse_metrics
from cllm_spec.metrics import macro_precision_recall_f1
from cllm_spec.model import forward, param_count
from cllm_spec.registry import get_backend
from tests.test_cli_generate import TEXT, assert_clean_error, cllm, make_checkpoint


@pytest.fixture(autouse=True)
def _no_backend_env(monkeypatch):
    monkeypatch.delenv("CLLM_BACKEND", raising=False)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("run"), step=5, run_backend="numpy")


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "val.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def run_main(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ---------------------------------------------------------------------- eval ---
def reference_scores(saved, ids: np.ndarray, t: int) -> dict[str, float]:
    """Loss and accuracies from explicit per-window forwards and a float64
    log-softmax of their logits (not the loss kernel, not the metric helpers)."""
    backend = get_backend("numpy")
    ce, hit, top5, preds, targets = [], [], [], [], []
    for start in range(0, ids.size - 1, t):
        x = ids[start : min(start + t, ids.size - 1)]
        y = ids[start + 1 : start + 1 + x.size]
        logits, _, _ = forward(backend, saved.cfg, saved.params, x[None, :])
        z = logits[0].astype(np.float64)  # (T, V)
        m = z.max(axis=1, keepdims=True)
        logp = z - m - np.log(np.exp(z - m).sum(axis=1, keepdims=True))
        own = z[np.arange(y.size), y]
        ce.extend(-logp[np.arange(y.size), y])
        hit.extend(z.argmax(axis=1) == y)
        top5.extend((z > own[:, None]).sum(axis=1) < 5)  # no exact ties here
        preds.extend(z.argmax(axis=1))
        targets.extend(y)
    p, r, f = macro_precision_recall_f1(
        np.array(preds), np.array(targets), saved.cfg.vocab_size
    )
    loss = float(np.mean(ce))
    return {
        "loss": loss,
        "perplexity": math.exp(loss),
        "accuracy": float(np.mean(hit)),
        "top5_accuracy": float(np.mean(top5)),
        "macro_precision": p,
        "macro_recall": r,
        "macro_f1": f,
    }


def test_eval_json_matches_a_per_window_reference(saved, data_file):
    code, out, err = cllm(
        "eval",
        str(saved.path),
        "--data",
        str(data_file),
        "--seq-len",
        "5",
        "--batch-size",
        "3",
        "--json",
    )
    assert code == 0, err
    report = json.loads(out)
    ids = saved.tokenizer.encode(TEXT).astype(np.int64)
    assert (ids.size - 1) % 5 != 0, "the text must leave a short tail window"
    want = reference_scores(saved, ids, 5)
    assert report["tokens"] == ids.size and report["predictions"] == ids.size - 1
    assert report["step"] == 5 and report["backend"] == "numpy"
    for key, value in want.items():
        # float32 model: the loss kernel's mean vs a float64 log-softmax
        assert report[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    assert 0.0 < report["accuracy"] < report["top5_accuracy"] < 1.0


def test_eval_text_output_and_default_seq_len(saved, data_file, capsys):
    code, out, _ = run_main(capsys, "eval", str(saved.path), "--data", str(data_file))
    assert code == 0
    rows = dict(line.split(None, 1) for line in out.splitlines())
    assert rows["seq_len"] == str(saved.cfg.block_size)
    ids = saved.tokenizer.encode(TEXT).astype(np.int64)
    want = reference_scores(saved, ids, saved.cfg.block_size)
    assert float(rows["loss"]) == pytest.approx(want["loss"], abs=1e-4)
    assert float(rows["perplexity"]) == pytest.approx(want["perplexity"], abs=1e-3)


def test_eval_does_not_depend_on_the_batch_size(saved, data_file, capsys):
    def loss(batch: str) -> float:
        argv = ["eval", str(saved.path), "--data", str(data_file), "--json"]
        code, out, _ = run_main(capsys, *argv, "--batch-size", batch)
        assert code == 0
        return json.loads(out)["loss"]

    assert loss("1") == pytest.approx(loss("64"), rel=1e-6)


@pytest.mark.parametrize(
    "n, t, b", [(2, 4, 1), (9, 4, 1), (9, 4, 2), (10, 3, 2), (17, 4, 3), (5, 8, 2)]
)
def test_windows_cover_every_prediction_once(n, t, b):
    ids = np.arange(n, dtype=np.int64)
    inputs, targets = [], []
    for x, y in windows(ids, t, b):
        assert x.shape == y.shape and x.ndim == 2
        assert x.shape[0] <= b and x.shape[1] <= t
        np.testing.assert_array_equal(y, x + 1)  # target = the next token
        inputs.extend(x.ravel().tolist())
        targets.extend(y.ravel().tolist())
    assert inputs == list(range(n - 1))
    assert targets == list(range(1, n))


@pytest.mark.parametrize(
    "extra, fragment",
    [
        (("--seq-len", "9"), "block_size"),
        (("--seq-len", "0"), "seq_len"),
        (("--batch-size", "0"), "batch_size"),
        (("--backend", "no_such_backend"), "no_such_backend"),
    ],
)
def test_eval_bad_arguments(saved, data_file, capsys, extra, fragment):
    code, _, err = run_main(
        capsys, "eval", str(saved.path), "--data", str(data_file), *extra
    )
    assert_clean_error(code, err, "eval", fragment)


@pytest.mark.parametrize(
    "content, fragment", [(None, "no such file"), ("cat", "at least 2"), ("", "")]
)
def test_eval_bad_data(saved, tmp_path, capsys, content, fragment):
    path = tmp_path / "data.txt"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    code, _, err = run_main(capsys, "eval", str(saved.path), "--data", str(path))
    assert_clean_error(code, err, "eval", fragment)


def test_eval_requires_data(saved, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", str(saved.path)])
    assert exit_info.value.code == 2
    assert "--data" in capsys.readouterr().err


# ---------------------------------------------------------------------- info ---
def test_info_json(saved):
    code, out, err = cllm("info", str(saved.path.parent), "--json")
    assert code == 0, err
    info = json.loads(out)  # strict JSON: the NaN val_loss became null
    assert info["path"] == str(saved.path)
    assert info["file_size"] == saved.path.stat().st_size
    assert info["checksum"] == "verified"
    assert info["step"] == 5
    assert info["model_config"] == saved.cfg.to_dict()
    assert info["parameters"] == param_count(saved.cfg) == saved.params.size
    assert info["dtype"] == "float32"
    assert info["tokenizer"] == {
        "kind": "word",
        "vocab_size": saved.tokenizer.vocab_size,
    }
    assert info["backend"] == "numpy"
    assert info["run"] == {"backend": "numpy", "step": 5}
    assert info["optimizer"] == {"name": "sgd", "step": 5}
    assert info["metrics"] == {"step": 5, "loss": 2.5, "val_loss": None, "lr": 0.1}


def test_info_text(saved, capsys):
    code, out, _ = run_main(capsys, "info", str(saved.path))
    assert code == 0
    rows = dict(line.split(None, 1) for line in out.splitlines())
    assert rows["step"] == "5"
    assert rows["parameters"] == f"{param_count(saved.cfg):,} (float32)"
    assert rows["tokenizer"] == f"word, vocab size {saved.tokenizer.vocab_size}"
    assert rows["file"].endswith("checksum verified")
    assert "loss=2.5" in rows["metrics"] and "val_loss=-" in rows["metrics"]
    assert rows["backend"] == "numpy"


def test_info_of_a_checkpoint_without_run_record(tmp_path, capsys):
    saved = make_checkpoint(tmp_path, step=2)
    code, out, _ = run_main(capsys, "info", str(saved.path), "--json")
    info = json.loads(out)
    assert code == 0 and info["backend"] is None and info["run"] is None
    assert info["step"] == 2


def test_info_reports_a_checksum_failure(saved, tmp_path, capsys):
    bad = tmp_path / saved.path.name
    data = bytearray(saved.path.read_bytes())
    data[-1] ^= 0x01
    bad.write_bytes(bytes(data))
    code, _, err = run_main(capsys, "info", str(bad))
    assert_clean_error(code, err, "info", "checksum mismatch")


def test_info_missing_and_truncated(saved, tmp_path, capsys):
    code, _, err = run_main(capsys, "info", str(tmp_path / "x.safetensors"))
    assert_clean_error(code, err, "info", "no such file")
    short = tmp_path / "short.safetensors"
    short.write_bytes(saved.path.read_bytes()[:100])
    code, _, err = run_main(capsys, "info", str(short))
    assert_clean_error(code, err, "info", "truncated")


@pytest.mark.parametrize(
    "name, meta, step",
    [
        ("ckpt-000000042.safetensors", {"optimizer": {"step": 7}}, 7),
        ("ckpt-000000042.safetensors", {"optimizer": None, "run": {"step": 9}}, 9),
        ("ckpt-000000042.safetensors", {"optimizer": None}, 42),
        ("model.safetensors", {"optimizer": None}, None),
    ],
)
def test_checkpoint_step_sources(name, meta, step):
    assert checkpoint_step(Path(name), meta) == step


# ---------------------------------------------------------------------- plot ---
def write_log(path: Path, rows: list[object], tail: str = "") -> None:
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
    path.write_text("\n".join(lines) + "\n" + tail, encoding="utf-8")


def training_log(steps: int = 60) -> list[dict[str, float]]:
    rows: list[dict[str, float]] = []
    for s in range(steps):
        lr = 1e-3 * min((s + 1) / 10, (steps - s) / (steps - 9))  # warmup, decay
        rows.append({"step": s, "loss": 4.0 * math.exp(-s / 30) + 1.0, "lr": lr})
        if s % 20 == 19:
            rows.append({"step": s, "val_loss": 4.2 * math.exp(-s / 30) + 1.1})
    return rows


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])  # the IHDR chunk: width, height


def colour_pixels(path: Path, hex_colour: str) -> int:
    """How many pixels are (nearly) the given colour (anti-aliasing blends the
    edges of a line with the white background, so allow 0.05 per channel)."""
    image = pytest.importorskip("matplotlib.image").imread(path)[..., :3]
    rgb = np.array([int(hex_colour[i : i + 2], 16) for i in (1, 3, 5)]) / 255.0
    return int(np.count_nonzero(np.abs(image - rgb).max(axis=-1) < 0.05))


TRAIN, VAL, LR = "#1f77b4", "#d62728", "#2ca02c"  # matplotlib's C0, C3, C2


def test_plot_writes_a_png_with_all_three_curves(tmp_path):
    pytest.importorskip("matplotlib")
    write_log(tmp_path / "metrics.jsonl", training_log(), tail='{"step": 60, "lo')
    code, out, err = cllm("plot", str(tmp_path))
    assert code == 0, err
    png = tmp_path / "metrics.png"
    assert out == f"wrote {png}\n"
    assert "skipped 1 line" in err  # the partial last line
    assert png_size(png) == (880, 660)  # 8 x 6 inches at 110 dpi
    for colour in (TRAIN, VAL, LR):
        assert colour_pixels(png, colour) > 100, colour


def test_plot_without_lr_has_one_panel_and_honours_output(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    rows = [{k: v for k, v in r.items() if k != "lr"} for r in training_log()]
    write_log(tmp_path / "metrics.jsonl", rows)
    out_png = tmp_path / "sub" / "curves.png"
    out_png.parent.mkdir()
    code, _, _ = run_main(capsys, "plot", str(tmp_path), "-o", str(out_png))
    assert code == 0
    assert png_size(out_png) == (880, 440)
    assert colour_pixels(out_png, TRAIN) > 100 and colour_pixels(out_png, VAL) > 20
    assert colour_pixels(out_png, LR) == 0


def test_parse_metrics_keeps_finite_values_with_a_step():
    lines = [
        '{"step": 1, "loss": 3.0, "lr": 0.1}',
        '{"step": 2, "loss": NaN, "lr": 0.2, "tokens": 9}',  # NaN loss skipped
        '{"step": 2, "val_loss": 2.5}',
        '{"loss": 9.0}',  # no step: skipped, not counted as malformed
        '{"step": true, "loss": 8.0}',  # a bool is not a step
        '{"step": 3, "loss": "2.0", "lr": null}',  # strings and nulls skipped
        "",
        "[1, 2]",  # not an object
        '{"step": 4, "loss"',  # cut
        '{"step": 5.0, "loss": 1.5}',
    ]
    curves = parse_metrics(lines)
    assert curves.points == {
        "loss": ([1.0, 5.0], [3.0, 1.5]),
        "val_loss": ([2.0], [2.5]),
        "lr": ([1.0, 2.0], [0.1, 0.2]),
    }
    assert curves.skipped == 2


def test_plot_without_matplotlib_gives_the_install_hint(tmp_path):
    blocker = tmp_path / "blocked" / "matplotlib"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('matplotlib blocked')\n")
    write_log(tmp_path / "metrics.jsonl", training_log(5))
    code, _, err = cllm(
        "plot", str(tmp_path), env={"PYTHONPATH": str(tmp_path / "blocked")}
    )
    assert_clean_error(code, err, "plot", 'pip install "cllm[plot]"')
    assert not (tmp_path / "metrics.png").exists()


def test_plot_errors(tmp_path, capsys):
    code, _, err = run_main(capsys, "plot", str(tmp_path))
    assert_clean_error(code, err, "plot", "metrics.jsonl")
    write_log(tmp_path / "metrics.jsonl", ['{"step": 1, "tokens": 5}', "oops"])
    code, _, err = run_main(capsys, "plot", str(tmp_path))
    assert_clean_error(code, err, "plot", "no row with a step")


# ----------------------------------------------------------- clean edges ---
def test_eval_reports_progress_per_batch(saved):
    from cllm_spec.commands.evaluate import evaluate

    ids = np.arange(100) % saved.cfg.vocab_size
    counts: list[int] = []
    evaluate(get_backend("numpy"), saved.cfg, saved.params, ids, 8, 3, counts.append)
    # 99 predictions: 12 windows of 8 in batches of 3, then a tail of 3
    assert counts == [24, 24, 24, 24, 3]


def test_eval_on_a_pipe_prints_no_progress_bar(saved, data_file):
    code, _, err = cllm("eval", str(saved.path), "--data", str(data_file))
    assert code == 0, err
    assert err == ""


def test_info_prints_only_the_schedule_fields_that_apply():
    from cllm_spec.commands.info import schedule_fields

    stored = {
        "name": "cosine",
        "lr": 0.01,
        "warmup_steps": 5,
        "total_steps": 100,
        "min_lr": 0.001,
        "step_size": 100,
        "gamma": 0.5,
        "resume_step": None,
        "resume_lr": None,
    }
    assert set(schedule_fields(stored)) == {
        "name",
        "lr",
        "warmup_steps",
        "total_steps",
        "min_lr",
    }
    step = {**stored, "name": "step"}
    assert "gamma" in schedule_fields(step) and "total_steps" not in schedule_fields(
        step
    )
    assert set(schedule_fields({**stored, "name": "constant"})) == {
        "name",
        "lr",
        "warmup_steps",
    }
    extended = {**stored, "resume_step": 50, "resume_lr": 0.004}
    assert schedule_fields(extended)["resume_lr"] == 0.004
    assert schedule_fields(None) is None and schedule_fields([1]) == [1]


def test_plot_of_a_checkpoint_names_the_run_directory(saved, tmp_path, capsys):
    code, _, err = run_main(capsys, "plot", str(saved.path))
    assert_clean_error(code, err, "plot", "a checkpoint, not a metrics log")
    assert f"cllm plot {saved.path.parent}" in err
    renamed = tmp_path / "weights.bin"
    renamed.write_bytes(saved.path.read_bytes())
    code, _, err = run_main(capsys, "plot", str(renamed))
    assert_clean_error(code, err, "plot", "a checkpoint, not a metrics log")
    binary = tmp_path / "x.jsonl"
    binary.write_bytes(b"\xff\xfe\xfa not utf-8")
    code, _, err = run_main(capsys, "plot", str(binary))
    assert_clean_error(code, err, "plot", "not a text file")
