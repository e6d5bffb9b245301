"""Run configuration: a TOML file, overridden by ``--set section.key=value``.

Every field has a default, so ``cllm train`` with no arguments is a complete run.
Values are validated when the config is built; an error names the field
(``train.batch_size: expected >= 1, got 0``). Unknown sections or keys are errors
too, so a typo never silently falls back to a default.

Every count and size has an upper bound as well (:data:`LIMITS`), far above any
run this project trains, so that a value from an edited checkpoint or a typo
(``parallel.workers = 100000``) is an error naming the field instead of an
allocation of gigabytes or a traceback.

    [model]     n_embd, n_layer, n_head, n_hidden, block_size, activation, ...
    [data]      corpus, tokenizer, vocab_size, val_fraction
    [optim]     name, lr, betas, eps, weight_decay, momentum, ...
    [schedule]  name, warmup_steps, min_lr, step_size, gamma
    [train]     backend, dtype, batch_size, seq_len, steps, grad_accum, clip_norm, ...
    [parallel]  workers, engine, check_every, timeout
"""

from __future__ import annotations

import dataclasses
import difflib
import tomllib
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cllm_spec.checks import expect_choice, expect_in_range, expect_int_scalar
from cllm_spec.errors import ConfigError
from cllm_spec.files import open_regular

#: The hint of every config error: where each field's range and meaning is written.
FIELD_HINT = (
    "`cllm train --print-config` lists every field with its range and meaning "
    "(cllm_spec/train/config_docs.py)"
)

#: ``(lowest, highest)`` of every int field: the highest is far above any run
#: of this model size (the model sizes allow ~10^11 parameters, counts of steps
#: ~10^12), so the bounds only stop values no run means.
LIMITS: dict[str, tuple[int, int]] = {
    "model.n_embd": (1, 65_536),
    "model.n_layer": (1, 1_024),
    "model.n_head": (1, 1_024),
    "model.n_hidden": (0, 262_144),
    "model.block_size": (1, 1_048_576),
    "data.vocab_size": (1, 16_777_216),
    "schedule.warmup_steps": (0, 10**12),
    "schedule.step_size": (1, 10**12),
    "train.batch_size": (1, 1_048_576),
    "train.seq_len": (1, 1_048_576),
    "train.steps": (1, 10**12),
    "train.grad_accum": (1, 1_048_576),
    "train.seed": (0, 2**63 - 1),
    "train.eval_every": (0, 10**12),
    "train.eval_batches": (1, 10**9),
    "train.checkpoint_every": (0, 10**12),
    "train.keep_last": (1, 10**6),
    "train.sample_every": (0, 10**12),
    "train.sample_tokens": (0, 1_048_576),
    "train.blas_threads": (0, 1_024),
    "parallel.workers": (0, 1_024),
    "parallel.check_every": (0, 10**12),
}
#: seconds: ``parallel.timeout`` at most a year (a wait longer than that is a
#: hang), ``train.time_limit`` at most ten years
MAX_TIMEOUT = 365 * 86_400.0
MAX_TIME_LIMIT = 10 * 365 * 86_400.0


def expect_count(name: str, value: object) -> int:
    """``value`` is an int within ``LIMITS[name]``."""
    lo, hi = LIMITS[name]
    v = expect_int_scalar(name, value)
    if v < lo:
        raise ConfigError(f"{name}: expected >= {lo}, got {v}")
    if v > hi:
        raise ConfigError(f"{name}: expected <= {hi:,}, got {v:,}")
    return v


def _expect_counts(section: str, obj: object) -> None:
    """Every field of ``obj`` named in LIMITS (as ``section.field``) is in range."""
    for field_ in dataclasses.fields(obj):  # type: ignore[arg-type]
        name = f"{section}.{field_.name}"
        if name in LIMITS:
            expect_count(name, getattr(obj, field_.name))


@dataclass(frozen=True)
class ModelSection:
    n_embd: int = 128  # C
    n_layer: int = 2  # L
    n_head: int = 4  # NH; C % NH == 0
    n_hidden: int = 0  # F; 0 means 4 * C
    block_size: int = 64  # T_max: longest context the position table covers
    # gelu | gelu_tanh | relu. relu by default: on the numpy backend a step is
    # 2x faster than with gelu_tanh and 4x than with erf gelu, for the same loss
    # at this size, which keeps `cllm train` well inside its time budget.
    activation: str = "relu"
    tie_embeddings: bool = True  # LM head shares the token embedding
    init: str = "gpt2"  # gpt2 | lattice

    def validate(self) -> None:
        _expect_counts("model", self)
        if self.n_embd % self.n_head:
            raise ConfigError(
                f"model.n_head: must divide model.n_embd={self.n_embd}, "
                f"got {self.n_head}"
            )
        expect_choice(
            "model.activation", self.activation, ("gelu", "gelu_tanh", "relu")
        )
        expect_choice("model.init", self.init, ("gpt2", "lattice"))


@dataclass(frozen=True)
class DataSection:
    corpus: str = "default"  # a file, a directory, or "default" (the bundled corpus)
    # word | byte | bpe. byte by default: a small model learns spelling within
    # minutes, while the word vocabulary (V ~ 12k) needs far more data and time.
    tokenizer: str = "byte"
    vocab_size: int = 4096  # upper bound for word and bpe vocabularies
    val_fraction: float = 0.1  # tail of the token stream held out for validation

    def validate(self) -> None:
        expect_choice("data.tokenizer", self.tokenizer, ("word", "byte", "bpe"))
        _expect_counts("data", self)
        expect_in_range("data.val_fraction", self.val_fraction, 0.0, 0.5, lo_open=True)


@dataclass(frozen=True)
class OptimSection:
    name: str = "adamw"  # sgd | adam | adamw | rmsprop | adagrad
    lr: float = 5e-3  # the default run's peak; see TrainSection.batch_size
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.01
    momentum: float = 0.0  # sgd and rmsprop
    dampening: float = 0.0  # sgd
    nesterov: bool = False  # sgd
    alpha: float = 0.99  # rmsprop
    centered: bool = False  # rmsprop
    lr_decay: float = 0.0  # adagrad
    # which parameters weight_decay applies to: all | matrices (2-D tensors:
    # linear weights and embeddings, as nanoGPT) | linear (linear weights only).
    # "all" by default, the optimizers' own rule, which the default run's
    # figures in the README were measured with.
    decay: str = "all"

    def validate(self) -> None:
        expect_choice(
            "optim.name", self.name, ("sgd", "adam", "adamw", "rmsprop", "adagrad")
        )
        expect_in_range("optim.lr", self.lr, 0.0, float("inf"), hi_open=True)
        if len(self.betas) != 2:
            raise ConfigError(f"optim.betas: expected two values, got {self.betas}")
        for i, beta in enumerate(self.betas):
            expect_in_range(f"optim.betas[{i}]", beta, 0.0, 1.0, hi_open=True)
        expect_in_range("optim.eps", self.eps, 0.0, 1.0)
        expect_in_range("optim.weight_decay", self.weight_decay, 0.0, 1e3)
        expect_in_range("optim.momentum", self.momentum, 0.0, 1.0)
        expect_in_range("optim.dampening", self.dampening, 0.0, 1.0)
        expect_in_range("optim.alpha", self.alpha, 0.0, 1.0)
        expect_in_range("optim.lr_decay", self.lr_decay, 0.0, 1e3)
        expect_choice("optim.decay", self.decay, ("all", "matrices", "linear"))
        if self.nesterov and (self.momentum <= 0.0 or self.dampening != 0.0):
            raise ConfigError(
                "optim.nesterov: needs optim.momentum > 0 and optim.dampening = 0, "
                f"got momentum={self.momentum}, dampening={self.dampening}"
            )


@dataclass(frozen=True)
class ScheduleSection:
    name: str = "cosine"  # constant | linear | cosine | step
    warmup_steps: int = 20  # step s < W uses lr * (s + 1) / W
    min_lr: float = 5e-4  # floor reached at train.steps (linear, cosine)
    step_size: int = 100  # step decay: multiply by gamma every step_size steps
    gamma: float = 0.5
    # what --resume with another train.steps does: continue (the rate goes on
    # from where it was, reaching min_lr at the new end) | replan (from step 0)
    on_resume: str = "continue"

    def validate(self) -> None:
        expect_choice(
            "schedule.name", self.name, ("constant", "linear", "cosine", "step")
        )
        expect_choice("schedule.on_resume", self.on_resume, ("continue", "replan"))
        _expect_counts("schedule", self)
        expect_in_range("schedule.min_lr", self.min_lr, 0.0, float("inf"), hi_open=True)
        expect_in_range("schedule.gamma", self.gamma, 0.0, 1.0, lo_open=True)


@dataclass(frozen=True)
class TrainSection:
    backend: str = ""  # "" means $CLLM_BACKEND, else the C backend if built, else numpy
    dtype: str = "float32"  # float32 | float64
    # B, sequences per micro-batch. 48 by default: a step is cut into 12 groups
    # (cllm_spec.parallel), and 4 rows per group keep each forward/backward
    # large enough that its fixed costs do not dominate. The default run (700
    # steps, peak lr 5e-3, 2.15M tokens) takes about 2.7 minutes on 2 cores
    # with one worker, and reaches a validation loss of 0.48 x the unigram
    # entropy (16 rows and lr 3e-3: 0.55 after 0.7M tokens).
    batch_size: int = 48
    seq_len: int = 64  # T, tokens per sequence (<= model.block_size)
    steps: int = 700  # optimizer steps
    grad_accum: int = 1  # micro-batches summed into one optimizer step
    clip_norm: float = 1.0  # global L2 clip; 0 disables
    seed: int = 1337
    eval_every: int = 100  # steps between validation passes; 0 disables
    eval_batches: int = 8  # validation micro-batches per pass
    checkpoint_every: int = 200  # steps between checkpoints; 0 means only at the end
    keep_last: int = 3  # checkpoints kept in out_dir
    sample_every: int = 200  # steps between printed samples; 0 disables
    sample_tokens: int = 64
    out_dir: str = "runs/default"
    time_limit: float = 0.0  # seconds; 0 means none. Stops cleanly with a checkpoint
    # BLAS threads during the run (threadpoolctl); 0 leaves BLAS as it is. 1 by
    # default: the model's matrices are small, so a second BLAS thread buys
    # little and, on a busy machine, makes steps several times slower while the
    # threads wait for each other; and each worker thread (parallel.workers) is
    # meant to keep one core busy, which the numpy kernels allow because BLAS
    # releases the GIL inside its matrix products.
    blas_threads: int = 1

    def validate(self) -> None:
        expect_choice("train.dtype", self.dtype, ("float32", "float64"))
        _expect_counts("train", self)
        expect_in_range(
            "train.clip_norm", self.clip_norm, 0.0, float("inf"), hi_open=True
        )
        expect_in_range("train.time_limit", self.time_limit, 0.0, MAX_TIME_LIMIT)
        if not self.out_dir:
            raise ConfigError("train.out_dir: expected a directory path, got ''")


@dataclass(frozen=True)
class ParallelSection:
    # Worker threads computing gradients (engine threads); 0: one per kernel
    # thread the backend runs (the C backend's count) or, for a backend that
    # does not say, one per CPU this process may use; at most 12, the groups of
    # a step (cllm_spec.train.engines.auto_workers). Same bits for any count.
    workers: int = 0
    # threads: one process, parallel.workers threads. mpi: one rank per process
    # of `mpiexec -n K cllm train`, one worker per rank (workers 0 or 1).
    engine: str = "threads"
    check_every: int = 1  # mpi: steps between weight-digest checks; 0 = never
    # Seconds a step (or an MPI exchange) may wait for a worker or a rank before
    # the run stops with an error naming it; bounds the time a hung peer costs.
    timeout: float = 600.0

    def validate(self) -> None:
        _expect_counts("parallel", self)
        expect_choice("parallel.engine", self.engine, ("threads", "mpi"))
        expect_in_range(
            "parallel.timeout", self.timeout, 0.0, MAX_TIMEOUT, lo_open=True
        )
        if self.engine == "mpi" and self.workers > 1:
            raise ConfigError(
                f"parallel.workers: the mpi engine runs one worker per rank, got "
                f"{self.workers}",
                hint="set parallel.workers=1 and start more ranks with mpiexec -n K",
            )


@dataclass(frozen=True)
class RunConfig:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    train: TrainSection = field(default_factory=TrainSection)
    parallel: ParallelSection = field(default_factory=ParallelSection)

    def __post_init__(self) -> None:
        for section in dataclasses.fields(self):
            getattr(self, section.name).validate()
        if self.train.seq_len > self.model.block_size:
            raise ConfigError(
                f"train.seq_len: must be <= model.block_size={self.model.block_size}, "
                f"got {self.train.seq_len}"
            )

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {
            name: dataclasses.asdict(getattr(self, name))
            for name in (f.name for f in dataclasses.fields(self))
        }


def _section_types() -> dict[str, type]:
    hints = typing.get_type_hints(RunConfig)
    return {f.name: hints[f.name] for f in dataclasses.fields(RunConfig)}


def _coerce(where: str, value: Any, annotation: Any) -> Any:
    """Convert a TOML or ``--set`` value to the field's type, or fail naming it."""
    origin = typing.get_origin(annotation)
    if annotation is bool:
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
            return value.lower() in ("true", "1")
        if isinstance(value, bool):
            return value
    elif annotation is int:
        try:
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        except (TypeError, ValueError):
            pass
    elif annotation is float:
        try:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        except (TypeError, ValueError):
            pass
    elif annotation is str:
        if isinstance(value, str):
            return value
    elif origin is tuple:
        items = value.split(",") if isinstance(value, str) else value
        args = typing.get_args(annotation)
        if isinstance(items, list | tuple) and len(items) == len(args):
            return tuple(
                _coerce(f"{where}[{i}]", v, t)
                for i, (v, t) in enumerate(zip(items, args, strict=True))
            )
    name = getattr(annotation, "__name__", str(annotation))
    raise ConfigError(f"{where}: expected {name}, got {value!r}")


def _nearest(word: str, choices: Sequence[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices``, or ``""``."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def from_dict(data: dict[str, Any]) -> RunConfig:
    """Build a validated config from nested ``{section: {key: value}}``.

    Every ConfigError carries :data:`FIELD_HINT`, and an unknown section or key
    names the nearest valid one.
    """
    try:
        return _from_dict(data)
    except ConfigError as exc:
        if exc.hint_text != ConfigError.hint:
            raise
        raise ConfigError(exc.message, hint=FIELD_HINT) from exc


def _from_dict(data: dict[str, Any]) -> RunConfig:
    sections = _section_types()
    kwargs: dict[str, Any] = {}
    for section_name, values in data.items():
        if section_name not in sections:
            raise ConfigError(
                f"{section_name}: unknown section"
                f"{_nearest(section_name, sorted(sections))}; expected one of "
                f"{sorted(sections)}"
            )
        if not isinstance(values, dict):
            raise ConfigError(f"{section_name}: expected a table of keys")
        cls = sections[section_name]
        hints = typing.get_type_hints(cls)
        known = {f.name for f in dataclasses.fields(cls)}
        converted = {}
        for key, value in values.items():
            where = f"{section_name}.{key}"
            if key not in known:
                raise ConfigError(
                    f"{where}: unknown key{_nearest(key, sorted(known))}; expected "
                    f"one of {sorted(known)}"
                )
            converted[key] = _coerce(where, value, hints[key])
        kwargs[section_name] = cls(**converted)
    return RunConfig(**kwargs)


def parse_overrides(pairs: list[str]) -> dict[str, dict[str, Any]]:
    """``["train.steps=10"]`` -> ``{"train": {"steps": "10"}}``."""
    nested: dict[str, dict[str, Any]] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot or not section or not name:
            raise ConfigError(f"--set {pair!r}: expected section.key=value")
        nested.setdefault(section, {})[name] = value.strip()
    return nested


def clamp_warmup(cfg: RunConfig) -> tuple[RunConfig, str | None]:
    """``(cfg, notice)``: a warmup that does not fit the run, shortened to fit.

    The linear and cosine schedules decay over the steps after the warmup, so
    they need ``schedule.warmup_steps < train.steps``. A shorter run than the
    warmup (``--set train.steps=20`` with the default 20 warmup steps) gets
    ``train.steps // 10`` warmup steps instead, and the notice says so; any
    other config is returned unchanged with ``None``.
    """
    s, steps = cfg.schedule, cfg.train.steps
    if s.name not in ("linear", "cosine") or s.warmup_steps < steps:
        return cfg, None
    fitted = steps // 10
    notice = (
        f"schedule.warmup_steps={s.warmup_steps} does not fit in "
        f"train.steps={steps}; warming up for {fitted} steps instead"
    )
    schedule = dataclasses.replace(s, warmup_steps=fitted)
    return dataclasses.replace(cfg, schedule=schedule), notice


def load_config(
    path: str | Path | None = None,
    overrides: Sequence[str] = (),
    base: dict[str, dict[str, Any]] | None = None,
) -> RunConfig:
    """Defaults, then ``base`` (a resumed run's config), then the TOML file at
    ``path``, then ``--set`` overrides."""
    return from_dict(merge_settings(base or {}, read_settings(path, overrides)))


def read_settings(
    path: str | Path | None = None, overrides: Sequence[str] = ()
) -> dict[str, Any]:
    """What the user set: the TOML file at ``path``, then ``--set`` overrides,
    as nested ``{section: {key: value}}`` (not yet validated)."""
    data: dict[str, Any] = {}
    if path is not None:
        from_file = _read_toml(Path(path))
        _merge(data, from_file)
    _merge(data, parse_overrides(list(overrides)))
    return data


#: A run config is a few kilobytes; anything far larger is not one.
MAX_CONFIG_BYTES = 1 << 20


def _read_toml(path: Path) -> dict[str, Any]:
    """The TOML document at ``path``; a ConfigError for anything that is not a
    readable UTF-8 TOML file (a directory, a FIFO, a binary file, ...)."""
    try:
        handle, size = open_regular(path, "--config", ConfigError)
    except FileNotFoundError as exc:
        raise ConfigError(f"--config {path}: no such file") from exc
    except OSError as exc:
        raise ConfigError(f"--config {path}: cannot read it: {exc.strerror}") from exc
    with handle:
        if size > MAX_CONFIG_BYTES:
            raise ConfigError(
                f"--config {path}: {size} bytes is not a run config (at most "
                f"{MAX_CONFIG_BYTES})",
                hint="name a TOML file such as configs/default.toml",
            )
        raw = handle.read(MAX_CONFIG_BYTES + 1)
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"--config {path}: not a text file (not UTF-8 at byte {exc.start})",
            hint="name a TOML file such as configs/default.toml",
        ) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            f"--config {path}: not valid TOML: {exc}",
            hint="name a TOML file such as configs/default.toml",
        ) from exc


def merge_settings(
    base: dict[str, dict[str, Any]], settings: dict[str, Any]
) -> dict[str, Any]:
    """``settings`` over a copy of ``base``, section by section."""
    data: dict[str, Any] = {section: dict(values) for section, values in base.items()}
    _merge(data, settings)
    return data


def _merge(data: dict[str, Any], update: dict[str, Any]) -> None:
    for section, values in update.items():
        if not isinstance(values, dict):
            data[section] = values  # from_dict reports the section that is no table
            continue
        current = data.get(section)
        if isinstance(current, dict):
            current.update(values)
        else:
            data[section] = dict(values)
