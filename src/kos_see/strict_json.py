"""Reading JSON by the standard's rules, not by Python's looser ones.

Python's ``json`` module reads NaN, Infinity and -Infinity, turns 1e400 into
an infinite float, keeps the last of two duplicate keys and gives a lone
surrogate (backslash-u d800) as a string that UTF-8 cannot hold. None of these
is JSON a strict parser accepts, so the engine refuses them wherever it reads
JSON from outside: task input, and the results and events of attempts.
"""

from __future__ import annotations

import json
import math
import re
import sys
from typing import Any

# Python refuses to read longer integers (a guard against slow conversions).
MAX_INT_DIGITS = sys.get_int_max_str_digits() or 4300
_SURROGATE = re.compile("[\ud800-\udfff]")


class NotJson(ValueError):
    """Text that is not JSON; the message says why."""


def loads(text: str, *, allow_surrogates: bool = False) -> Any:
    """``text`` as a JSON value, or :class:`NotJson` naming what is wrong.

    ``allow_surrogates`` leaves lone surrogates in strings for a caller that
    replaces them itself.
    """
    try:
        value = json.loads(
            text,
            parse_constant=_no_constant,
            parse_float=_finite_float,
            parse_int=_bounded_int,
            object_pairs_hook=_unique_keys,
        )
    except json.JSONDecodeError as exc:
        raise NotJson(f"{exc.msg} at line {exc.lineno} column {exc.colno}") from exc
    except RecursionError as exc:
        raise NotJson("nested too deeply to read") from exc
    if not allow_surrogates and _has_surrogate(value):
        raise NotJson("a string holds a lone surrogate, which UTF-8 cannot encode")
    return value


def _no_constant(name: str) -> Any:
    raise NotJson(f"{name} is not a JSON value")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise NotJson(f"the number {text[:40]} is too large for a float")
    return value


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise NotJson(f"an integer has more than {MAX_INT_DIGITS} digits")
    return int(text)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise NotJson(f"duplicate key {key[:100]!r} in an object")
        out[key] = value
    return out


def _has_surrogate(value: Any) -> bool:
    # Iterative: a value nested as deep as the parser allows must not
    # exhaust the stack here.
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False
