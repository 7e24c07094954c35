"""JSON from untrusted bytes: a size limit, a nesting-depth limit and no NaN or infinity (``1e400`` included).

Python's parser recurses once per nesting level, so 200 KB of ``[[[[…`` ends in a ``RecursionError`` that names
nothing; here it is a ``ValueError`` saying what was wrong, which callers turn into an error naming file or key.
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np

__all__ = ["MAX_JSON_DEPTH", "loads_limited", "nesting_depth"]

MAX_JSON_DEPTH = 64
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_OPEN = np.zeros(256, np.int8)
_OPEN[[ord("["), ord("{")]] = 1
_OPEN[[ord("]"), ord("}")]] = -1


def _reject_constant(name: str) -> float:
    raise ValueError(f"non-finite number {name}")


def _finite(text: str) -> float:
    """A JSON number with a fraction or exponent: ``1e400`` overflows to infinity, which is refused like NaN."""
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"non-finite number {text[:20]} (it overflows a float)")
    return value


def nesting_depth(data: bytes) -> int:
    """How deeply arrays and objects nest in ``data`` (brackets inside strings do not count)."""
    if data.count(b"[") + data.count(b"{") <= 1:
        return data.count(b"[") + data.count(b"{")
    stripped = _STRING.sub(b'""', data)
    steps = _OPEN[np.frombuffer(stripped, np.uint8)]
    return int(np.cumsum(steps, dtype=np.int64).max(initial=0))


def loads_limited(data: bytes | str, *, max_bytes: int, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """``json.loads`` with limits; ``ValueError`` (never ``RecursionError``) for anything it refuses."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)
    if len(raw) > max_bytes:
        raise ValueError(f"{len(raw)} bytes is over the {max_bytes}-byte limit")
    if raw.count(b"[") + raw.count(b"{") > max_depth:  # only then can it nest deeper than allowed
        depth = nesting_depth(raw)
        if depth > max_depth:
            raise ValueError(f"nested {depth} levels deep (the limit is {max_depth})")
    try:
        return json.loads(raw, parse_constant=_reject_constant, parse_float=_finite)
    except RecursionError as error:  # unreachable after the depth check; kept so a parser change cannot leak one
        raise ValueError(f"nested too deeply ({error})") from None
    except UnicodeDecodeError as error:
        raise ValueError(f"not UTF-8 ({error})") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"not valid JSON ({error})") from None
