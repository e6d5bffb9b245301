"""Parsing JSON read from untrusted files, with its depth and size bounded first.

Python's :func:`json.loads` is fine for trusted text and two ways unsafe for
hostile text:

- it recurses once per level of nesting, so ``[[[...]]]`` 100,000 deep raises
  RecursionError, and a value 900 deep parses but crashes whatever walks it
  recursively afterwards;
- it builds one Python object per value, and those cost far more than their
  text: ``[],`` is 3 bytes of JSON and a 56-byte list plus an 8-byte slot,
  ``"ab",`` 5 bytes and a 51-byte string, so 30 MiB of ``[],`` takes about
  700 MiB.

:func:`loads` therefore scans the text first without building anything: it
walks the structural characters outside strings and counts the *items*, the
containers opened and the commas between elements or members. Every value
but the first of a container follows a comma, so ``items + 1`` bounds the
number of values. It raises :class:`JSONLimitError` as soon as the depth
passes ``max_depth`` or the items pass ``max_items``, so a hostile text costs
at most ``max_items`` steps of the scan, and only then calls ``json.loads``,
whose recursion is now at most ``max_depth`` deep and whose objects number at
most ``max_items + 1``.

Text the scan treats as a string is a string to ``json.loads`` too, or a
syntax error there, so the depth json reaches is never above the scanned one;
invalid JSON gets through the scan only to fail in ``json.loads``.
"""

from __future__ import annotations

import json
import re
from typing import Any

# Everything up to the next structural character (runs of other characters
# and whole strings, escapes included), then that character if there is one.
# Possessive, so the engine keeps no backtracking state however long the run;
# always matched at a given position (never searched), so every character is
# looked at once.
_STEP = re.compile(
    r'(?:[^"\[\]{},]++|"[^"\\]*+(?:\\.[^"\\]*+)*+")*+([\[\]{},])?', re.DOTALL
)


class JSONLimitError(ValueError):
    """The text nests deeper, or holds more items, than the caller allows."""


def measure(text: str, *, max_depth: int, max_items: int) -> int:
    """The items of ``text`` (containers opened + commas), checked against
    the limits; raises JSONLimitError at the first excess.

    The scan ends at the end of the text or at an unterminated string (what
    follows is inside it for ``json.loads``, which then fails).
    """
    depth = items = pos = 0
    while True:
        step = _STEP.match(text, pos)
        assert step is not None  # every part of the pattern may match nothing
        char = step[1]
        if char is None:
            return items
        pos = step.end()
        if char == "]" or char == "}":
            depth -= 1
            continue
        items += 1
        if items > max_items:
            raise JSONLimitError(f"more than {max_items:,} JSON items")
        if char != ",":
            depth += 1
            if depth > max_depth:
                raise JSONLimitError(f"JSON nested more than {max_depth} levels deep")


def loads(text: str, *, max_depth: int, max_items: int) -> tuple[Any, int]:
    """``(json.loads(text), items)`` once :func:`measure` has accepted ``text``.

    Raises JSONLimitError for text over the limits and ValueError
    (``json.JSONDecodeError``) for text that is not JSON.
    """
    items = measure(text, max_depth=max_depth, max_items=max_items)
    return json.loads(text), items


__all__ = ["JSONLimitError", "loads", "measure"]
