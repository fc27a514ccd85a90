"""Counters behind ``inductor_moe.stats()``: pattern matches, rejected candidates and kernel fallbacks."""
from __future__ import annotations

import threading
from collections import Counter

_lock = threading.Lock()
_matches: Counter = Counter()
_rejected: Counter = Counter()  # (pattern, reason) -> count, a candidate that was left as it was
_fallbacks: Counter = Counter()  # (op, reason) -> count, a kernel family that declined a call
_graphs = {"seen": 0, "rewritten": 0}
_events: list[dict] = []  # one per candidate, for explain(); capped
_MAX_EVENTS = 10_000


def record_match(pattern: str, n: int = 1) -> None:
    with _lock:
        _matches[pattern] += n


def record_rejection(pattern: str, reason: str) -> None:
    with _lock:
        _rejected[(pattern, reason)] += 1


def record_fallback(op: str, reason: str) -> None:
    with _lock:
        _fallbacks[(op, reason)] += 1


def record_event(pattern: str, module: str, node: str, matched: bool, reason: str) -> None:
    with _lock:
        if len(_events) < _MAX_EVENTS:
            _events.append({"pattern": pattern, "module": module, "node": node, "matched": matched, "reason": reason})


def events() -> list[dict]:
    """Every candidate the pass looked at since the last reset: pattern, module path, node, matched, reason."""
    with _lock:
        return [dict(e) for e in _events]


def record_graph(rewritten: bool) -> None:
    with _lock:
        _graphs["seen"] += 1
        _graphs["rewritten"] += int(rewritten)


def stats() -> dict:
    """A snapshot: ``matches`` {pattern: n}, ``rejected`` and ``fallbacks`` as lists of
    {"pattern"/"op", "reason", "count"}, and ``graphs`` {"seen", "rewritten"}."""
    with _lock:
        return {
            "matches": dict(_matches),
            "rejected": [{"pattern": p, "reason": r, "count": n} for (p, r), n in _rejected.items()],
            "fallbacks": [{"op": o, "reason": r, "count": n} for (o, r), n in _fallbacks.items()],
            "graphs": dict(_graphs),
        }


def save_state() -> dict:
    """A copy of every counter and event, for ``restore_state`` (explain() leaves the caller's stats as they were)."""
    with _lock:
        return {"matches": Counter(_matches), "rejected": Counter(_rejected), "fallbacks": Counter(_fallbacks),
                "graphs": dict(_graphs), "events": [dict(e) for e in _events]}


def restore_state(state: dict) -> None:
    with _lock:
        for counter, key in ((_matches, "matches"), (_rejected, "rejected"), (_fallbacks, "fallbacks")):
            counter.clear()
            counter.update(state[key])
        _graphs.update(state["graphs"])
        _events[:] = [dict(e) for e in state["events"]]


def reset_stats() -> None:
    with _lock:
        _matches.clear()
        _rejected.clear()
        _fallbacks.clear()
        _graphs.update(seen=0, rewritten=0)
        _events.clear()
