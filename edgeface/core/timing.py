"""Interleaved timing rounds: the one loop that bench and deploy's engine choice time their subjects with."""
from __future__ import annotations

import time
from typing import Callable, Optional, Sequence, TypeVar

S = TypeVar("S")
R = TypeVar("R")


def interleaved_rounds(subjects: Sequence[S], turn: Callable[[S, int], R], *, rounds: Optional[int] = None,
                       seconds: Optional[float] = None, min_rounds: int = 0, order: str = "rotate") -> list[list[R]]:
    """Each subject's turns, timed in interleaved rounds: every round gives each subject one turn
    (``turn(subject, round)``), so a change in the machine's load or clock hits all of them alike, and the
    order changes from round to round so no subject always follows another: ``"rotate"`` starts each round one
    later (A B C, B C A, C A B, ...), ``"reverse"`` alternates (A B C, C B A, A B C, ...). Exactly ``rounds``
    rounds, or rounds until ``seconds`` have passed and at least ``min_rounds`` were run. Returns, per subject
    in the order given, its turns' results in round order. Used by ``edgeface bench`` (worker processes) and
    deploy's engine choice (``deploy.choose``, Predictors in this process), which is why it sits in core."""
    if (rounds is None) == (seconds is None):
        raise ValueError("pass exactly one of rounds and seconds")
    if order not in ("rotate", "reverse"):
        raise ValueError(f"order must be 'rotate' or 'reverse', got {order!r}")
    n = len(subjects)
    results: list[list[R]] = [[] for _ in range(n)]
    deadline = None if seconds is None else time.perf_counter() + seconds
    r = 0
    while (r < rounds) if deadline is None else (time.perf_counter() < deadline or r < min_rounds):
        for k in range(n):
            i = (k + r) % n if order == "rotate" else (k if r % 2 == 0 else n - 1 - k)
            results[i].append(turn(subjects[i], r))
        r += 1
    return results
