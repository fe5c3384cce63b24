"""Worker threads for independent per-column or per-block work inside one stage; results
in input order, so the output does not depend on the thread count. See docs/hpc.md.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")
_THREADS = 1


def set_threads(n: int | None) -> None:
    """Threads the stage may use (the job's `threads`; 1 = run everything in this thread)."""
    global _THREADS
    _THREADS = max(1, int(n or 1))


def threads() -> int:
    """Threads the stage may use."""
    return _THREADS


def thread_map(fn: Callable[[Any], T], items: Iterable[Any], n: int | None = None) -> list[T]:
    """[fn(x) for x in items], the calls spread over `n` (default `threads()`) threads; results
    in input order, the first exception re-raised."""
    items = list(items)
    n = threads() if n is None else max(1, int(n))
    if n <= 1 or len(items) < 2:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(max_workers=min(n, len(items))) as ex:
        return list(ex.map(fn, items))
