"""Regenerate ``decay_groups.json``: torch.optim with two parameter groups.

Needs torch, which is no test dependency, so this runs by hand (in the
benchmark environment: ``pip install torch``) and its output is committed:

    python tests/golden/make_decay_groups.py > tests/golden/decay_groups.json

For a tiny model, each optimizer takes three float64 steps with
``weight_decay`` on the parameters that ``optim.decay`` selects and 0 on the
rest (torch's param groups); the JSON holds the inputs' seeds and the final
flat parameters. ``tests/test_train_decay_groups.py`` replays the same steps
through ``cllm_spec.train.state.optimizer_step`` with ``decay_mask``.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import torch

from cllm_spec.model import ModelConfig, init_params, param_layout
from cllm_spec.train.state import decay_mask

CFG = ModelConfig(vocab_size=5, n_embd=4, n_layer=1, n_head=1, block_size=2, n_hidden=8)
LR, WD, STEPS, SEED = 0.05, 0.3, 3, 7
OPTIMIZERS = {
    "sgd": (torch.optim.SGD, {"momentum": 0.9}),
    "adam": (torch.optim.Adam, {"betas": (0.9, 0.95), "eps": 1e-8}),
    "adamw": (torch.optim.AdamW, {"betas": (0.9, 0.95), "eps": 1e-8}),
    "rmsprop": (torch.optim.RMSprop, {"alpha": 0.9, "momentum": 0.5}),
    "adagrad": (torch.optim.Adagrad, {"lr_decay": 0.01}),
}


def inputs() -> tuple[np.ndarray, list[np.ndarray]]:
    rng = np.random.default_rng(SEED)
    params = init_params(CFG, rng, np.float64) + 0.5  # biases away from 0
    grads = [rng.standard_normal(params.size) for _ in range(STEPS)]
    return params, grads


def torch_run(name: str, rule: str) -> list[float]:
    params, grads = inputs()
    layout = param_layout(CFG)
    mask = decay_mask(CFG, rule)
    assert mask is not None
    views = layout.views(params)
    tensors = {k: torch.tensor(v, requires_grad=True) for k, v in views.items()}
    decayed = [t for k, t in tensors.items() if mask[layout.slice(k)].all()]
    plain = [t for k, t in tensors.items() if not mask[layout.slice(k)].any()]
    assert len(decayed) + len(plain) == len(tensors)  # whole tensors only
    cls, hyper = OPTIMIZERS[name]
    opt = cls(
        [{"params": decayed, "weight_decay": WD}, {"params": plain, "weight_decay": 0}],
        lr=LR,
        **hyper,
    )
    for g in grads:
        for k, t in tensors.items():
            t.grad = torch.tensor(layout.views(g)[k])
        opt.step()
    return np.concatenate(
        [t.detach().numpy().ravel() for t in tensors.values()]
    ).tolist()


def main() -> None:
    golden = {
        "lr": LR,
        "weight_decay": WD,
        "steps": STEPS,
        "seed": SEED,
        "torch": torch.__version__,
        "results": {
            f"{name}/{rule}": torch_run(name, rule)
            for name in OPTIMIZERS
            for rule in ("matrices", "linear")
        },
    }
    json.dump(golden, sys.stdout, indent=0)


if __name__ == "__main__":
    main()
