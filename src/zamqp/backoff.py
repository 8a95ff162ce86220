"""Backoff: how long to wait before the next connection attempt."""
import random


class Backoff:
    """Jittered exponential delays between reconnect attempts.

    Shared by producers and consumers. Each ``delay()`` doubles the
    next one, from ``first`` up to ``cap`` seconds, and is jittered to
    between half and all of it, so many clients of one broker do not
    come back in step. A broker that refuses the TCP connection (it is
    down or restarting) is cheap to ask again: ``delay(refused=True)``
    waits at most ``refused_cap`` seconds, so clients are back within
    about that long of the broker listening again. ``reset()`` (call it
    once a connection works) starts over from ``first``.
    """

    def __init__(self, first=0.25, cap=30.0, refused_cap=1.0):
        if not 0 < first <= cap:
            raise ValueError(f'backoff needs 0 < first <= cap, got first='
                             f'{first!r} cap={cap!r}')
        self.first = first
        self.cap = cap
        self.refused_cap = min(refused_cap, cap)
        self._next = first

    def delay(self, refused=False):
        """Seconds to wait before the next attempt (jittered)."""
        current = self._next
        self._next = min(current * 2, self.cap)
        if refused:
            current = min(current, self.refused_cap)
        return current * random.uniform(0.5, 1.0)

    def reset(self):
        """Start over from ``first`` (a connection worked)."""
        self._next = self.first

    def __repr__(self):
        return (f'<Backoff next={self._next:g}s cap={self.cap:g}s '
                f'refused_cap={self.refused_cap:g}s>')
