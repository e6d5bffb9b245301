"""ParamLayout: named views over one flat parameter buffer (cllm_spec.gradients)."""

from __future__ import annotations

import numpy as np
import pytest

from cllm_spec.errors import ConfigError, DTypeError, EmptyInputError, ShapeError
from cllm_spec.gradients import ParamLayout

# A GPT-like fragment: V = 5, C = 2, T = 3, one layernorm, a scalar
SHAPES = {"wte": (5, 2), "wpe": (3, 2), "ln.weight": (2,), "ln.bias": (2,), "s": ()}


@pytest.fixture
def layout() -> ParamLayout:
    return ParamLayout(SHAPES)


def test_size_offsets_and_order(layout):
    # 10 + 6 + 2 + 2 + 1 elements, packed in insertion order without padding
    assert layout.size == 21
    assert layout.offsets == {
        "wte": 0,
        "wpe": 10,
        "ln.weight": 16,
        "ln.bias": 18,
        "s": 20,
    }
    assert layout.names == ("wte", "wpe", "ln.weight", "ln.bias", "s")
    assert list(layout) == list(SHAPES) and len(layout) == 5
    assert layout["wpe"] == (3, 2) and "wte" in layout and "nope" not in layout
    assert layout.numel("wte") == 10 and layout.numel("s") == 1
    assert layout.slice("ln.bias") == slice(18, 20)


def test_pairs_and_mapping_build_the_same_layout(layout):
    assert ParamLayout(list(SHAPES.items())) == layout
    assert ParamLayout([("a", 3)])["a"] == (3,)  # an int is a 1-d shape
    assert ParamLayout([("a", (2,)), ("b", (1,))]) != ParamLayout(
        [("b", (1,)), ("a", (2,))]
    )


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_views_share_memory_with_one_allocation(layout, dtype):
    flat = layout.zeros(dtype)
    assert flat.shape == (21,) and flat.dtype == dtype
    views = layout.views(flat)
    assert list(views) == list(SHAPES)
    for name, view in views.items():
        assert view.shape == SHAPES[name] and view.dtype == dtype
        assert np.shares_memory(view, flat)
        assert view.base is flat or view.base is flat.base
    views["wpe"][1, 0] = 7.0
    views["s"][...] = -1.0
    assert flat[10 + 2] == 7.0 and flat[20] == -1.0
    flat[16:18] = [3.0, 4.0]
    assert views["ln.weight"].tolist() == [3.0, 4.0]


def test_views_cover_the_buffer_exactly_once(layout):
    flat = np.arange(21, dtype=np.float64)
    covered = np.concatenate([v.reshape(-1) for v in layout.views(flat).values()])
    assert covered.tolist() == list(range(21))


def test_flatten_round_trips(layout):
    rng = np.random.default_rng(0)
    arrays = {n: rng.standard_normal(s).astype(np.float32) for n, s in SHAPES.items()}
    flat = layout.flatten(arrays)
    assert flat.dtype == np.float32 and flat.shape == (21,)
    for name, view in layout.views(flat).items():
        assert np.array_equal(view, arrays[name])
    assert layout.flatten(arrays, dtype=np.float64).dtype == np.float64


@pytest.mark.parametrize("length", [0, 20, 22])
def test_views_wrong_length_is_shape_error(layout, length):
    with pytest.raises(ShapeError):
        layout.views(np.zeros(length, np.float32))


def test_views_bad_buffers(layout):
    with pytest.raises(ShapeError):
        layout.views(np.zeros((21, 1), np.float32))
    with pytest.raises(ShapeError):  # a strided view would not share one allocation
        layout.views(np.zeros(42, np.float32)[::2])
    with pytest.raises(DTypeError):
        layout.views(np.zeros(21, np.int32))
    with pytest.raises(DTypeError):
        layout.views([0.0] * 21)
    with pytest.raises(DTypeError):
        layout.zeros(np.int64)


def test_flatten_errors(layout):
    good = {n: np.zeros(s, np.float32) for n, s in SHAPES.items()}
    with pytest.raises(ConfigError):
        layout.flatten({k: v for k, v in good.items() if k != "wte"})
    with pytest.raises(ConfigError):
        layout.flatten({**good, "extra": np.zeros(1, np.float32)})
    with pytest.raises(ShapeError):
        layout.flatten({**good, "wte": np.zeros((2, 5), np.float32)})
    with pytest.raises(DTypeError):
        layout.flatten({**good, "wte": np.zeros((5, 2), np.float64)})


@pytest.mark.parametrize(
    ("shapes", "error"),
    [
        ({}, EmptyInputError),
        ([("a", (2,)), ("a", (3,))], ConfigError),  # duplicate name
        ({"": (2,)}, ConfigError),
        ([(3, (2,))], ConfigError),  # name not a string
        ({"a": (0,)}, ConfigError),  # zero-size dimension
        ({"a": (2, -1)}, ConfigError),
        ({"a": (2.0,)}, ConfigError),
        ({"a": "ab"}, ConfigError),
        ([("a",)], ConfigError),
    ],
)
def test_bad_layouts(shapes, error):
    with pytest.raises(error):
        ParamLayout(shapes)


def test_layout_is_immutable_from_outside(layout):
    layout.shapes["wte"] = (1,)
    layout.offsets["wte"] = 99
    assert layout["wte"] == (5, 2) and layout.offsets["wte"] == 0
    assert "ParamLayout" in repr(layout) and "'wte': (5, 2)" in repr(layout)
    assert hash(layout) == hash(ParamLayout(SHAPES))
