"""JSON from untrusted files: depth and size bounded before parsing
(spec: ``cllm_spec.bounded_json``)."""

from __future__ import annotations

import json
import time

import pytest

from cllm_spec import bounded_json as bj

LOOSE = {"max_depth": 100, "max_items": 10**6}


@pytest.mark.parametrize(
    ("text", "items"),
    [
        ("{}", 1),
        ("[]", 1),
        ("3.5", 0),
        ('"a string"', 0),
        ("[1, 2, 3]", 3),  # the list and two commas
        ('{"a": [1, {"b": null}], "c": "d"}', 5),
        # brackets and commas inside strings, escaped quotes and backslashes
        (r'["x]]],{{\"[", "\\", ",]"]', 3),
        (r'{"\\\"": ["\"]}"]}', 2),
    ],
)
def test_items_count_containers_and_commas_outside_strings(
    text: str, items: int
) -> None:
    assert bj.measure(text, **LOOSE) == items
    value, counted = bj.loads(text, **LOOSE)
    assert counted == items and value == json.loads(text)


def test_depth_is_refused_before_json_recurses() -> None:
    assert bj.loads("[" * 5 + "]" * 5, max_depth=5, max_items=10)[0] == [[[[[]]]]]
    with pytest.raises(bj.JSONLimitError, match="nested more than 5 levels"):
        bj.loads("[" * 6 + "]" * 6, max_depth=5, max_items=10)
    deep = '{"a":' * 100_000 + "1" + "}" * 100_000  # RecursionError in json.loads
    with pytest.raises(bj.JSONLimitError, match="nested"):
        bj.loads(deep, max_depth=32, max_items=10**6)
    # Brackets inside strings are not nesting.
    assert bj.measure('["' + "[" * 1000 + '"]', max_depth=1, max_items=1) == 1


def test_items_are_refused_before_anything_is_built() -> None:
    text = "[" + "[]," * 1000 + "[]]"  # 1 + 1001 lists, 1000 commas
    assert bj.measure(text, max_depth=2, max_items=2002) == 2002
    with pytest.raises(bj.JSONLimitError, match="more than 2,001 JSON items"):
        bj.loads(text, max_depth=2, max_items=2001)


def test_the_scan_stops_early_and_is_linear() -> None:
    # A hostile text is refused after max_items steps, however long it is...
    many = "[" + "[]," * 3_000_000 + "[]]"
    begin = time.perf_counter()
    with pytest.raises(bj.JSONLimitError):
        bj.measure(many, max_depth=4, max_items=1000)
    # ... and a long string (an unterminated one too) is one step, not one per
    # character: a search that restarted at every position would be quadratic.
    long = "x" * 20_000_000
    assert bj.measure(f'["{long}"]', max_depth=4, max_items=10) == 1
    assert bj.measure(f'["{long}', max_depth=4, max_items=10) == 1
    assert bj.measure(json.dumps(json.dumps([long[:5000]] * 2000)), **LOOSE) == 0
    assert time.perf_counter() - begin < 10  # about 0.3 s on an idle machine


@pytest.mark.parametrize("text", ["[1,", '{"a" 1}', "[1] x", '"\\q"', ""])
def test_invalid_json_is_a_value_error(text: str) -> None:
    with pytest.raises(ValueError):
        bj.loads(text, **LOOSE)
