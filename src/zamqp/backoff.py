"""Backoff: how long to wait before the next connection attempt."""
import random

from amqp import exceptions as amqp_errors

# The broker is down, starting or stopping: asking again is cheap.
_AWAY = (ConnectionRefusedError, ConnectionResetError, ConnectionAbortedError,
         BrokenPipeError, amqp_errors.ConnectionForced)


def broker_away(exc):
    """Whether ``exc`` (or an exception it was raised from) says the
    broker is down, starting or stopping rather than refusing us: the TCP
    connection was refused, reset or aborted, the socket closed in the
    handshake, or the broker closed the connection for shutdown."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, _AWAY) or (isinstance(exc, OSError) and
                                      str(exc) == 'Socket closed'):
            return True
        exc = exc.__cause__
    return False


class Backoff:
    """Jittered exponential delays between reconnect attempts.

    Shared by producers and consumers. Each ``delay()`` doubles the
    next one, from ``first`` up to ``cap`` seconds, and is jittered to
    between half and all of it, so many clients of one broker do not
    come back in step. A broker that is away (``broker_away``: it
    refuses or resets the TCP connection while down, starting or
    stopping) is cheap to ask again: ``delay(refused=True)`` waits at
    most ``refused_cap`` seconds, so clients are back within about that
    long of the broker listening again. ``reset()`` (call it
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
