"""The peer benchmark's configs and the project's side of each contest.

Everything here goes through the project's public API, so that a faster
``cllm_spec.model``, ``cllm_spec.generate`` or backend shows up in the figures:

* training: ``model.forward_loss`` and ``model.backward`` on the whole batch, then
  ``train.step.apply_update`` (the backend's ``clip_grad_norm`` and
  ``adamw_step``, called as ``cllm train`` calls them);
* decoding: ``generate.generate`` with greedy sampling (``cllm generate``'s path).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from cllm_spec.data.tokenizers import ByteTokenizer
from cllm_spec.generate import generate
from cllm_spec.model import (
    ModelConfig,
    backward,
    forward,
    forward_loss,
    init_params,
    param_count,
    param_layout,
)
from cllm_spec.registry import get_backend
from cllm_spec.sampling import SamplingConfig
from cllm_spec.tolerances import tolerance
from cllm_spec.train.config import RunConfig, from_dict
from cllm_spec.train.state import (
    decay_mask,
    init_optimizer_state,
    model_config,
    optimizer_hyperparameters,
)
from cllm_spec.train.step import apply_update

DECODE_PROMPT = 16
DECODE_NEW = 128
SEED = 1234
BYTE_VOCAB = ByteTokenizer().vocab_size
# What `cllm train` would run, with the two fields the benchmark fixes spelt out.
RUN = from_dict({"optim": {"name": "adamw"}, "train": {"clip_norm": 1.0}})


@dataclass(frozen=True)
class Bench:
    """A model and the batch it trains on: ``batch`` rows of ``seq`` tokens."""

    name: str
    model: ModelConfig
    batch: int
    seq: int
    warmup: int = 2  # training steps before timing (torch.compile compiles here)

    @property
    def tokens(self) -> int:
        return self.batch * self.seq

    @property
    def byte_vocab(self) -> bool:
        """``cllm train`` with its byte tokenizer can run this model."""
        return self.model.vocab_size == BYTE_VOCAB

    def params(self, cfg: ModelConfig | None = None) -> np.ndarray:
        """The one float32 weight buffer every contestant starts from."""
        return init_params(cfg or self.model, np.random.default_rng(SEED), np.float32)

    def train_overrides(self) -> list[str]:
        """``cllm train --set`` values that make its run this benchmark's."""
        m = self.model
        return [
            f"model.n_embd={m.n_embd}",
            f"model.n_layer={m.n_layer}",
            f"model.n_head={m.n_head}",
            f"model.n_hidden={m.n_hidden}",
            f"model.block_size={m.block_size}",
            f"model.activation={m.activation}",
            f"train.batch_size={self.batch}",
            f"train.seq_len={self.seq}",
        ]


def _default_bench() -> Bench:
    """The model and batch of a plain ``cllm train`` (its config's defaults)."""
    run = RunConfig()
    if run.data.tokenizer != "byte":
        raise RuntimeError("the default config's vocabulary is no longer bytes")
    cfg = model_config(run, BYTE_VOCAB)  # as cllm train builds it
    return Bench("default", cfg, run.train.batch_size, run.train.seq_len)


CONFIGS: dict[str, Bench] = {
    "tiny": Bench(
        "tiny", ModelConfig(BYTE_VOCAB, 32, 1, 1, 8, activation="gelu"), 2, 8
    ),
    "default": _default_bench(),
    "small": Bench(
        "small",
        ModelConfig(4096, 128, 4, 4, 64, n_hidden=512, activation="gelu"),
        16,
        64,
    ),
    "production": Bench(
        "production",
        ModelConfig(30000, 384, 6, 12, 256, n_hidden=1536, activation="gelu"),
        32,
        128,
        warmup=1,
    ),
}


def batch_for(bench: Bench) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, targets)``: (B, T) int32 each, targets the ids shifted by one."""
    rng = np.random.default_rng(SEED + 1)
    seq = rng.integers(0, bench.model.vocab_size, (bench.batch, bench.seq + 1))
    return (
        np.ascontiguousarray(seq[:, :-1], dtype=np.int32),
        np.ascontiguousarray(seq[:, 1:], dtype=np.int32),
    )


def decode_config(bench: Bench) -> ModelConfig:
    """The model with room for the prompt and every new token in its cache."""
    need = DECODE_PROMPT + DECODE_NEW
    return dataclasses.replace(
        bench.model, block_size=max(bench.model.block_size, need)
    )


# ------------------------------------------------------------- formulas ----
def train_flop_per_token(bench: Bench) -> float:
    """6 N_mm + 12 L C T (peers.py's docstring)."""
    m = bench.model
    c, f, n = m.n_embd, m.n_hidden, m.n_layer
    n_mm = n * (4 * c * c + 2 * c * f) + m.vocab_size * c
    return 6.0 * n_mm + 12.0 * n * c * bench.seq


def decode_bytes_per_token(cfg: ModelConfig) -> float:
    """float32 bytes of every weight but the position rows a token does not use."""
    return 4.0 * (param_count(cfg) - cfg.block_size * cfg.n_embd + cfg.n_embd)


# ---------------------------------------------------------- contestants ----
class OurTrainer:
    """One training step of ``backend_name`` through the model API."""

    def __init__(
        self,
        backend_name: str,
        cfg: ModelConfig,
        flat: np.ndarray,
        ids: np.ndarray,
        targets: np.ndarray,
    ) -> None:
        self.backend = get_backend(backend_name)
        self.cfg = cfg
        self.params = flat.copy()
        self.ids, self.targets = ids, targets
        self.state = init_optimizer_state(RUN.optim.name, self.params)
        self.decay_mask = decay_mask(cfg, RUN.optim.decay)  # None: decay all

    @staticmethod
    def hyperparameters() -> dict[str, Any]:
        """AdamW's settings in ``cllm train``'s defaults, lr included."""
        return {"lr": RUN.optim.lr, **optimizer_hyperparameters(RUN.optim)}

    def step(self) -> float:
        """forward + backward + clip + AdamW; the loss before the update."""
        # the training forward keeps no logits, as torch keeps none
        loss, cache = forward_loss(
            self.backend, self.cfg, self.params, self.ids, self.targets
        )
        grads = backward(self.backend, self.cfg, self.params, cache)
        self.params, self.state, _ = apply_update(
            self.backend,
            RUN,
            self.params,
            grads,
            self.state,
            RUN.optim.lr,
            self.decay_mask,
        )
        assert loss is not None
        return loss


class OurDecoder:
    """Greedy generation of ``backend_name`` through ``cllm_spec.generate``."""

    def __init__(self, backend_name: str, cfg: ModelConfig, flat: np.ndarray) -> None:
        self.backend = get_backend(backend_name)
        self.cfg = cfg
        self.params = flat
        self.sampling = SamplingConfig(greedy=True)

    def generate(self, prompt: np.ndarray, new_tokens: int) -> np.ndarray:
        rng = np.random.default_rng(0)  # greedy draws nothing from it
        return generate(
            self.backend,
            self.cfg,
            self.params,
            prompt,
            new_tokens,
            self.sampling,
            rng,
            None,
        )

    def prefill(self, prompt: np.ndarray) -> int:
        """The prompt's forward and the first token, as ``generate`` does it."""
        return int(self.generate(prompt, 1)[0])


def make_trainer(name: str, bench: Bench, flat: np.ndarray) -> Any:
    """The training contestant ``name`` on ``bench``'s model and batch."""
    ids, targets = batch_for(bench)
    if name in ("c", "numpy"):
        return OurTrainer(name, bench.model, flat, ids, targets)
    import peers_torch

    return peers_torch.TorchTrainer(
        bench.model,
        flat,
        ids,
        targets,
        OurTrainer.hyperparameters(),
        decayed_names(bench.model),
        compiled=name == "torch.compile",
    )


def decayed_names(cfg: ModelConfig, rule: str = RUN.optim.decay) -> set[str]:
    """The canonical tensors that ``optim.decay = rule`` decays (every rule
    decays whole tensors)."""
    layout = param_layout(cfg)
    mask = decay_mask(cfg, rule)
    if mask is None:
        return set(layout.names)
    return {n for n in layout.names if mask[layout.slice(n)].all()}


def make_decoder(name: str, cfg: ModelConfig, flat: np.ndarray) -> Any:
    """The decoding contestant ``name`` (torch.compile does not decode here)."""
    if name in ("c", "numpy"):
        return OurDecoder(name, cfg, flat)
    import peers_torch

    return peers_torch.TorchDecoder(cfg, flat)


# ------------------------------------------------------------- checks ------
def reference_loss(bench: Bench, flat: np.ndarray) -> float:
    """The initial weights' loss in float64 (NumPy reference)."""
    ids, targets = batch_for(bench)
    numpy_backend = get_backend("numpy")
    _, loss, _ = forward(
        numpy_backend, bench.model, flat.astype(np.float64), ids, targets
    )
    assert loss is not None
    return loss


def check_loss(
    config: str, name: str, threads: int, loss: float, expected: float
) -> dict[str, Any]:
    """A contestant's first loss against the float64 reference, with the
    project's ``model``/``loss`` float32 tolerance."""
    tol = tolerance("model", "loss", "float32")
    err = abs(loss - expected)
    return {
        "config": config,
        "contestant": name,
        "threads": threads,
        "loss": loss,
        "expected": expected,
        "rel_err": err / abs(expected),
        "ok": bool(err <= tol.atol + tol.rtol * abs(expected)),
    }


# ------------------------------------------------------------- threads -----
_blas: Any = None


def set_threads(name: str, n: int) -> None:
    """Give contestant ``name`` ``n`` threads (peers.py's docstring)."""
    global _blas
    if name == "c":
        get_backend("c").set_num_threads(n)
    elif name == "numpy":
        if _blas is None:
            from threadpoolctl import ThreadpoolController

            _blas = ThreadpoolController()
        _blas.limit(limits=n, user_api="blas")
    elif name in ("torch", "torch.compile"):
        import peers_torch

        peers_torch.set_threads(n)
    else:
        raise ValueError(f"no contestant {name!r}")
