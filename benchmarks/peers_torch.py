"""The project's GPT written in PyTorch, for the peer benchmark (``peers.py``).

The same model as :mod:`cllm_spec.model`, built from PyTorch's own modules the
way a PyTorch user would write it: token + position embeddings, L pre-LN blocks
(fused QKV ``(3C, C)`` with bias, ``scaled_dot_product_attention`` with the
causal mask, output projection ``(C, C)``; fc ``(F, C)``, activation, proj
``(C, F)``), LayerNorm eps 1e-5, a final LayerNorm, an LM head tied to the token
embedding, mean cross-entropy. Module names are the spec's canonical tensor
names without ``model.``, so :func:`load_flat` copies the project's flat
parameter buffer in by name and both sides run the same weights.

Decoding keeps its own KV cache: one preallocated ``(L, 2, 1, NH, T_max, HS)``
tensor written in place, attention over the filled prefix, and LM-head logits
for the last position only (what nanoGPT's ``generate`` does).

Only ``peers.py`` imports this module, and only when a torch contestant runs:
torch is a dependency of the benchmark's environment (``tox -e bench``), never
of the project.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 (PyTorch's own convention)
from torch import nn

from cllm_spec.model import LN_EPS, ModelConfig, param_views

_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": F.gelu,  # erf form, as the spec's gelu
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        c = cfg.n_embd
        self.n_head = cfg.n_head
        self.qkv = nn.Linear(c, 3 * c)  # rows q, k, v; head h of q is rows h*HS..
        self.proj = nn.Linear(c, c)

    def heads(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """q, k, v: (B, NH, T, HS) each."""
        b, t, c = x.shape
        q, k, v = self.qkv(x).split(c, dim=2)
        hs = c // self.n_head
        return tuple(z.view(b, t, self.n_head, hs).transpose(1, 2) for z in (q, k, v))

    def merge(self, y: torch.Tensor) -> torch.Tensor:
        b, nh, t, hs = y.shape
        out: torch.Tensor = self.proj(y.transpose(1, 2).reshape(b, t, nh * hs))
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.heads(x)
        return self.merge(F.scaled_dot_product_attention(q, k, v, is_causal=True))

    def forward_cached(
        self, x: torch.Tensor, kv: torch.Tensor, pos: int
    ) -> torch.Tensor:
        """Append x's keys and values to ``kv: (2, 1, NH, T_max, HS)`` at ``pos``.

        Either a prompt into an empty cache (pos 0, causal) or one token that
        attends to every cached position.
        """
        q, k, v = self.heads(x)
        t = x.shape[1]
        kv[0, :, :, pos : pos + t] = k
        kv[1, :, :, pos : pos + t] = v
        keys, values = kv[0, :, :, : pos + t], kv[1, :, :, : pos + t]
        if t > 1 and pos != 0:
            raise ValueError("a chunk after the prompt is not needed here")
        y = F.scaled_dot_product_attention(q, keys, values, is_causal=t > 1)
        return self.merge(y)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(cfg.n_embd, cfg.n_hidden)
        self.proj = nn.Linear(cfg.n_hidden, cfg.n_embd)
        self.act = _ACTIVATIONS[cfg.activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.proj(self.act(self.fc(x)))
        return out


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, eps=LN_EPS)
        self.attn = Attention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, eps=LN_EPS)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))

    def forward_cached(
        self, x: torch.Tensor, kv: torch.Tensor, pos: int
    ) -> torch.Tensor:
        x = x + self.attn.forward_cached(self.ln_1(x), kv, pos)
        return x + self.mlp(self.ln_2(x))


class TorchGPT(nn.Module):
    """``forward(ids, targets) -> mean loss``; tied LM head, no dropout."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if not cfg.tie_embeddings:
            raise ValueError("the peer benchmark's models tie the LM head")
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.h = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd, eps=LN_EPS)

    def forward(self, ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        t = ids.shape[1]
        x = self.wte(ids) + self.wpe(torch.arange(t, device=ids.device))
        for block in self.h:
            x = block(x)
        logits = F.linear(self.ln_f(x), self.wte.weight)  # (B, T, V)
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten())

    def new_cache(self) -> torch.Tensor:
        cfg = self.cfg
        shape = (cfg.n_layer, 2, 1, cfg.n_head, cfg.block_size, cfg.head_size)
        return torch.zeros(shape)

    def next_logits(
        self, ids: torch.Tensor, cache: torch.Tensor, pos: int
    ) -> torch.Tensor:
        """Logits (V,) of the token after ``ids: (1, T)`` placed at ``pos``."""
        t = ids.shape[1]
        x = self.wte(ids) + self.wpe(torch.arange(pos, pos + t))
        for i, block in enumerate(self.h):
            x = block.forward_cached(x, cache[i], pos)
        return F.linear(self.ln_f(x[0, -1]), self.wte.weight)


def load_flat(model: TorchGPT, flat: np.ndarray) -> None:
    """Copy the project's flat float32 buffer into ``model`` by canonical name."""
    views = param_views(model.cfg, flat)
    state = {
        name.removeprefix("model."): torch.from_numpy(np.array(view, np.float32))
        for name, view in views.items()
    }
    model.load_state_dict(state, strict=True)


class TorchTrainer:
    """forward + backward + ``clip_grad_norm_(1.0)`` + AdamW, eager or compiled."""

    def __init__(
        self,
        cfg: ModelConfig,
        flat: np.ndarray,
        ids: np.ndarray,
        targets: np.ndarray,
        hyper: dict[str, Any],
        decayed: set[str],
        *,
        compiled: bool,
    ) -> None:
        self.model = TorchGPT(cfg)
        load_flat(self.model, flat)
        self.step_fn: Any = torch.compile(self.model) if compiled else self.model
        self.ids = torch.from_numpy(ids.astype(np.int64))
        self.targets = torch.from_numpy(targets.astype(np.int64))
        params = dict(self.model.named_parameters())
        groups = [  # cllm train's optim.decay as two parameter groups
            {"params": [p for n, p in params.items() if "model." + n in decayed]},
            {
                "params": [p for n, p in params.items() if "model." + n not in decayed],
                "weight_decay": 0.0,
            },
        ]
        self.opt = torch.optim.AdamW(
            [g for g in groups if g["params"]],
            lr=hyper["lr"],
            betas=hyper["betas"],
            eps=hyper["eps"],
            weight_decay=hyper["weight_decay"],
            fused=True,  # the fastest of PyTorch's CPU AdamW implementations
        )

    def step(self) -> float:
        self.opt.zero_grad(set_to_none=True)
        loss = self.step_fn(self.ids, self.targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        return float(loss.detach())


class TorchDecoder:
    """Greedy batch-1 decoding with :meth:`TorchGPT.next_logits` (eager)."""

    def __init__(self, cfg: ModelConfig, flat: np.ndarray) -> None:
        self.model = TorchGPT(cfg)
        load_flat(self.model, flat)
        self.model.eval()

    @torch.inference_mode()
    def prefill(self, prompt: np.ndarray) -> int:
        cache = self.model.new_cache()
        ids = torch.from_numpy(prompt.astype(np.int64))[None, :]
        return int(torch.argmax(self.model.next_logits(ids, cache, 0)))

    @torch.inference_mode()
    def generate(self, prompt: np.ndarray, new_tokens: int) -> np.ndarray:
        cache = self.model.new_cache()
        ids = torch.from_numpy(prompt.astype(np.int64))[None, :]
        pos = 0
        out = np.zeros(new_tokens, dtype=np.int64)
        for i in range(new_tokens):
            tok = int(torch.argmax(self.model.next_logits(ids, cache, pos)))
            out[i] = tok
            pos += ids.shape[1]
            ids = torch.tensor([[tok]])
        return out


def set_threads(n: int) -> None:
    torch.set_num_threads(n)


def version() -> str:
    return f"torch {torch.__version__}"
