"""Where one training step's time goes: forward + backward + clip + AdamW through
the model API (``cllm_spec.model``'s ``forward_loss`` and ``backward``, as
training runs them), split into C kernel time (matrix products and the rest),
Python work inside the backend's wrappers, input validation, the model's own
glue (residual adds, gradient copies, buffer zeroing) and page faults.

Every C entry point the backend calls is wrapped with a timer (by patching the
``kernel`` helper each wrapper module uses), every public backend function and
every ``validate_*`` the wrappers and the model call too; the step's wall time
minus the backend functions' time is the model's glue. Page faults are counted
with ``getrusage``, with the process's system time (page faults and mappings,
mostly; that time is already inside the kernels that first touch the pages).

    python benchmarks/profile_step.py                       # all three, 1 thread
    python benchmarks/profile_step.py --config default --threads 2 --steps 20

Timer overhead is about a microsecond per wrapped call, which inflates the
shares of the many small calls a little; the untimed step is printed next to it.
"""

from __future__ import annotations

import argparse
import collections
import os
import resource
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from cllm_spec import model
from cllm_spec.model import ModelConfig
from cllm_spec.registry import get_backend

#: (ModelConfig kwargs, B, T) of the configs of issue 8.
CONFIGS: dict[str, tuple[dict[str, Any], int, int]] = {
    "default": (
        dict(vocab_size=256, n_embd=128, n_layer=2, n_head=4, block_size=64,
             activation="relu"),
        48, 64,
    ),
    "small": (
        dict(vocab_size=4096, n_embd=128, n_layer=4, n_head=4, n_hidden=512,
             block_size=64, activation="gelu"),
        16, 64,
    ),
    "production": (
        dict(vocab_size=30000, n_embd=384, n_layer=6, n_head=12, n_hidden=1536,
             block_size=128, activation="gelu"),
        32, 128,
    ),
}  # fmt: skip

# cllm_ffn_forward is two products and the activation between them;
# cllm_linear_backward_act a product whose epilogue applies the activation's
# derivative
GEMM_KERNELS = (
    "cllm_linear_forward",
    "cllm_linear_backward",
    "cllm_linear_backward_act",
    "cllm_sgemm",
    "cllm_ffn_forward",
)
WRAPPER_MODULES = ("ffn", "attention", "embedding", "gradients", "losses", "optim")


class Clock:
    """Accumulated seconds and calls per (category, name)."""

    def __init__(self) -> None:
        self.seconds: dict[tuple[str, str], float] = collections.defaultdict(float)
        self.calls: dict[tuple[str, str], int] = collections.defaultdict(int)

    def wrap(self, category: str, name: str, fn: Callable[..., Any]) -> Any:
        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[category, name] += time.perf_counter() - t0
                self.calls[category, name] += 1

        return timed

    def total(self, category: str) -> float:
        return sum(s for (c, _), s in self.seconds.items() if c == category)


class TimedLib:
    """The C library with every ``cllm_*`` entry timed by ``clock``."""

    def __init__(self, real: Any, clock: Clock) -> None:
        self._real = real
        self._clock = clock

    def __getattr__(self, name: str) -> Any:
        fn = getattr(self._real, name)
        if name.startswith("cllm_") and callable(fn):
            return self._clock.wrap("c", name, fn)
        return fn


@contextmanager
def instrumented(backend: Any, clock: Clock) -> Iterator[None]:
    """Patch timers into the C backend's wrappers and the model for the block."""
    import importlib

    saved: list[tuple[Any, str, Any]] = []

    def patch(obj: Any, attr: str, new: Any) -> None:
        saved.append((obj, attr, getattr(obj, attr)))
        setattr(obj, attr, new)

    for mod_name in WRAPPER_MODULES:
        mod = importlib.import_module(f"cllm_c.{mod_name}")
        if hasattr(mod, "kernel"):
            real_kernel = mod.kernel

            def kernel(name: str, dtype: Any, _real: Any = real_kernel) -> Any:
                return clock.wrap("c", name, _real(name, dtype))

            patch(mod, "kernel", kernel)
        if hasattr(mod, "lib"):  # entries called by name (lib.cllm_ffn_forward)
            patch(mod, "lib", TimedLib(mod.lib, clock))
        for attr in dir(mod):
            if attr.startswith("validate_"):
                patch(mod, attr, clock.wrap("validate", attr, getattr(mod, attr)))
    for attr in ("validate_forward", "validate_backward"):
        patch(model, attr, clock.wrap("validate", attr, getattr(model, attr)))
    targets = [backend]
    if getattr(backend, "model_kernels", None) is not None:
        targets.append(backend.model_kernels)
    for target in targets:
        for attr in dir(target):
            if attr.startswith("_"):
                continue  # internal helpers: nested inside the public ones
            fn = getattr(target, attr)
            if (
                callable(fn)
                and attr.endswith(("_forward", "_backward", "_step"))
                or (attr in ("clip_grad_norm", "grad_global_norm"))
            ):
                patch(target, attr, clock.wrap("backend", attr, fn))
    try:
        yield
    finally:
        for obj, attr, old in reversed(saved):
            setattr(obj, attr, old)


class Step:
    """One config's training step on ``backend`` (the model API, AdamW)."""

    def __init__(self, backend: Any, name: str, seed: int = 0) -> None:
        kwargs, b, t = CONFIGS[name]
        self.backend, self.cfg, self.tokens = backend, ModelConfig(**kwargs), b * t
        rng = np.random.default_rng(seed)
        self.params = model.init_params(self.cfg, rng, np.float32)
        self.ids = rng.integers(0, self.cfg.vocab_size, (b, t)).astype(np.int32)
        self.targets = np.roll(self.ids, -1, axis=1)
        from cllm_spec.optim import init_adam_state

        self.state = init_adam_state(self.params)

    def __call__(self) -> float:
        be = self.backend
        cfg, params = self.cfg, self.params
        # training's forward, which keeps no logits: with them (model.forward)
        # a production step holds 491 MB more, and at two threads its buffers
        # no longer all fit the C backend's cache of freed mappings, so every
        # step faulted some of them in afresh, which no training run does
        loss, cache = model.forward_loss(be, cfg, params, self.ids, self.targets)
        grads = model.backward(be, self.cfg, self.params, cache)
        grads, _ = be.clip_grad_norm(grads, 1.0)
        # lr 0 keeps the weights (and so every later step's work) the same
        self.params, self.state = be.adamw_step(
            self.params, grads, self.state, lr=0.0, betas=(0.9, 0.95)
        )
        return loss


def profile(backend: Any, name: str, steps: int) -> str:
    step = Step(backend, name)
    for _ in range(2):
        step()  # warm: mappings, the GEMM's packing buffers
    plain = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        plain.append(time.perf_counter() - t0)
    clock = Clock()
    usage0 = resource.getrusage(resource.RUSAGE_SELF)
    with instrumented(backend, clock):
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        wall = (time.perf_counter() - t0) / steps
    usage = resource.getrusage(resource.RUSAGE_SELF)
    faults = (usage.ru_minflt - usage0.ru_minflt) / steps
    # the kernel's time: page faults (zeroing fresh pages) and munmap, mostly
    system_s = (usage.ru_stime - usage0.ru_stime) / steps
    per = {k: v / steps for k, v in clock.seconds.items()}
    c_gemm = sum(v for (c, n), v in per.items() if c == "c" and n in GEMM_KERNELS)
    c_all = sum(v for (c, _), v in per.items() if c == "c")
    validate = sum(v for (c, _), v in per.items() if c == "validate")
    model_validate = per.get(("validate", "validate_forward"), 0.0) + per.get(
        ("validate", "validate_backward"), 0.0
    )
    backend_total = sum(v for (c, _), v in per.items() if c == "backend")
    wrapper_py = backend_total - c_all - (validate - model_validate)
    glue = wall - backend_total - model_validate
    med = statistics.median(plain)
    rows = [
        ("C matrix products (linear fwd/bwd)", c_gemm),
        ("C other kernels", c_all - c_gemm),
        ("  system time (page faults, mmap; inside the above)", system_s),
        ("validation (wrappers + model)", validate),
        ("Python in the backend wrappers", wrapper_py),
        ("model.py glue (adds, grad copies, zeroing)", glue),
    ]
    lines = [
        f"### {name}: {step.tokens} tokens/step, {backend.num_threads()} thread(s)",
        "",
        f"untimed step {med * 1e3:.1f} ms ({step.tokens / med:,.0f} tokens/s); "
        f"instrumented {wall * 1e3:.1f} ms; {faults:,.0f} page faults/step",
        "",
        "| part | ms/step | share |",
        "| --- | ---: | ---: |",
    ]
    for label, s in rows:
        lines.append(f"| {label} | {s * 1e3:.2f} | {100 * s / wall:.1f}% |")
    lines += ["", "| C kernel | calls/step | ms/step |", "| --- | ---: | ---: |"]
    c_rows = sorted(
        ((n, v) for (c, n), v in per.items() if c == "c"), key=lambda r: -r[1]
    )
    for n, v in c_rows:
        calls = clock.calls["c", n] / steps
        lines.append(f"| {n} | {calls:g} | {v * 1e3:.2f} |")
    return "\n".join(lines)


def make_trainer(backend: Any, out_dir: str) -> Any:
    """The Trainer ``cllm train`` builds for the default config: 1 worker thread,
    no evaluation, samples or intermediate checkpoints."""
    from pathlib import Path

    from cllm_spec.train.config import load_config
    from cllm_spec.train.loop import Trainer
    from cllm_spec.train.prepare import prepare_data

    sets = [
        "train.backend=c", "train.eval_every=0", "train.sample_every=0",
        "train.checkpoint_every=0", "parallel.workers=1", f"train.out_dir={out_dir}",
    ]  # fmt: skip
    cfg = load_config(None, sets)
    data = prepare_data(cfg, Path(out_dir), None)
    return Trainer(cfg, "c", backend, data, None, lambda _: None)


def compare_train(backend: Any, rounds: int, steps: int) -> str:
    """``cllm train``'s step (the 12 groups on a worker thread, the reduction,
    clip and AdamW, the data stream) against the model API's step on the whole
    batch of the same model, alternating; process CPU time and wall time."""
    import tempfile

    from cllm_spec.optim import init_adam_state

    with tempfile.TemporaryDirectory() as tmp:
        trainer = make_trainer(backend, tmp)
        api = Step(backend, "default")
        api.cfg = trainer.model_cfg
        api.params = trainer.params.copy()
        api.state = init_adam_state(api.params)
        b, t = trainer.cfg.train.batch_size, trainer.cfg.train.seq_len
        rng = np.random.default_rng(0)
        api.ids = rng.integers(0, api.cfg.vocab_size, (b, t)).astype(np.int32)
        api.targets = np.roll(api.ids, -1, axis=1)
        runs: dict[str, Callable[[], Any]] = {
            "model API": api,
            "cllm train": trainer.train_step,
        }
        cpu: dict[str, list[float]] = {k: [] for k in runs}
        wall: dict[str, list[float]] = {k: [] for k in runs}
        with trainer.engine:
            for fn in runs.values():
                fn()  # warm
            for _ in range(rounds):
                for name, fn in runs.items():
                    c0, w0 = time.process_time(), time.perf_counter()
                    for _ in range(steps):
                        fn()
                    cpu[name].append(b * t * steps / (time.process_time() - c0))
                    wall[name].append(b * t * steps / (time.perf_counter() - w0))
    lines = [
        "| path | tokens/CPU-s (median) | tokens/s wall (median) |",
        "| --- | ---: | ---: |",
    ]
    for name in runs:
        c, w = statistics.median(cpu[name]), statistics.median(wall[name])
        lines.append(f"| {name} | {c:,.0f} | {w:,.0f} |")
    ratio_cpu = statistics.median(cpu["cllm train"]) / statistics.median(
        cpu["model API"]
    )
    ratio_wall = statistics.median(wall["cllm train"]) / statistics.median(
        wall["model API"]
    )
    return "\n".join(lines) + (
        f"\n\ncllm train / model API: {ratio_cpu:.3f} (CPU time), "
        f"{ratio_wall:.3f} (wall)"
    )


def rates(backend: Any, names: list[str], threads: list[int], steps: int) -> None:
    """One JSON line per (config, threads): tokens/s of the model-API step, by
    wall time and by process CPU time (which another process's load on the
    machine disturbs less), medians of ``steps`` single steps."""
    import json

    for name in names:
        step = Step(backend, name)
        for n in threads:
            backend.set_num_threads(n)
            step()  # warm
            wall, cpu = [], []
            for _ in range(steps or {"production": 3}.get(name, 10)):
                c0, w0 = time.process_time(), time.perf_counter()
                step()
                wall.append(step.tokens / (time.perf_counter() - w0))
                cpu.append(step.tokens / (time.process_time() - c0))
            row = {
                "config": name, "threads": n, "wall": statistics.median(wall),
                "cpu": statistics.median(cpu), "load": os.getloadavg()[0],
            }  # fmt: skip
            print(json.dumps(row), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", nargs="*", default=list(CONFIGS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=0, help="0: by config")
    parser.add_argument(
        "--train", type=int, default=0, metavar="ROUNDS",
        help="compare cllm train with the model API on the default config instead",
    )  # fmt: skip
    parser.add_argument(
        "--rate", action="store_true",
        help="only tokens/s per config at 1 and 2 threads, as JSON lines",
    )  # fmt: skip
    args = parser.parse_args()
    backend = get_backend("c")
    if args.rate:
        rates(backend, args.config, [1, 2], args.steps)
        return
    backend.set_num_threads(args.threads)
    print(f"load average {os.getloadavg()}")
    if args.train:
        print(compare_train(backend, args.train, args.steps or 20))
        print(f"load average {os.getloadavg()}")
        return
    for name in args.config:
        steps = args.steps or {"default": 20, "small": 20, "production": 3}[name]
        print(profile(backend, name, steps), "\n", flush=True)
    print(f"load average {os.getloadavg()}")


if __name__ == "__main__":
    main()
