"""Remote zope events: AMQPEvent publishes, AMQPEventCallback notifies."""
from __future__ import annotations

import atexit
import threading
from typing import TYPE_CHECKING

import zope.event
from zope.interface import implementer

from zamqp import serializers
from zamqp.exceptions import PublishFailed
from zamqp.interfaces import IAMQPEvent
from zamqp.producer import AMQPProducer

if TYPE_CHECKING:
    from zamqp.props import AMQPProps

_lock = threading.Lock()
_producers = {}
_atexit_registered = False


@implementer(IAMQPEvent)
class AMQPEvent:
    """Notify it to send ``payload`` to every consumer of ``queue``.

    ``zope.event.notify(AMQPEvent(queue, props, payload))`` publishes the
    payload (pickled) to ``props.exchange`` with routing key ``queue``;
    with ``serializer='json'`` the payload is written as JSON (JSON
    values, and datetime, date, time, Decimal, UUID and bytes, see
    docs/serialization.rst), which the consumers' AMQPEventCallback
    notifies as the same value, and which non-Python consumers, kombu
    and celery can read.
    Creating an AMQPEvent makes sure ``dispatch`` is one of
    ``zope.event.subscribers``; in a Zope site the same dispatch also runs
    as a subscriber of the component registry. Either way the payload is
    published once per AMQPEvent: notify a new AMQPEvent to send again.

    Inside an active transaction (see zamqp.transactional) the payload is
    published after the transaction committed, and never if it aborts.
    """

    def __init__(self, queue: str, props: AMQPProps, payload: object,
                 serializer: str = 'pickle') -> None:
        self.queue = queue
        self.props = props
        self.payload = payload
        self.serializer = serializers.get(serializer).name
        self._pending = True
        install()

    def publish(self) -> bool:
        """Publish (or, in a transaction, queue) the payload once."""
        if not self.__dict__.pop('_pending', False):
            return False
        try:
            producer_for(self.queue, self.props,
                         self.serializer)(self.payload)
        except BaseException:
            self._pending = True    # not sent: notifying again may send it
            raise
        return True

    def __repr__(self):
        return (f'<AMQPEvent {self.queue!r} on {self.props.exchange!r}: '
                f'{self.payload!r}>')


def dispatch(event: object) -> None:
    """Publish ``event``'s payload if it is an IAMQPEvent not yet sent.

    Meant for ``zope.event.subscribers`` and, as a handler for
    IAMQPEvent, for the component registry; both may run for one event.
    """
    if IAMQPEvent.providedBy(event):
        event.publish()


def install() -> None:
    """Make ``dispatch`` a zope.event subscriber (once)."""
    if dispatch not in zope.event.subscribers:
        with _lock:
            if dispatch not in zope.event.subscribers:
                zope.event.subscribers.append(dispatch)


def uninstall() -> None:
    """Remove ``dispatch`` from zope.event's subscribers."""
    with _lock:
        while dispatch in zope.event.subscribers:
            zope.event.subscribers.remove(dispatch)


def producer_for(queue: str, props: AMQPProps,
                 serializer: str = 'pickle') -> AMQPProducer:
    """The shared producer events for ``queue`` on ``props`` written by
    ``serializer`` go through.

    It is transactional: in a transaction it publishes on commit.
    """
    key = (queue, props) if serializer == 'pickle' else \
        (queue, props, serializer)
    producer = _producers.get(key)
    if producer is None:
        with _lock:
            producer = _producers.get(key)
            if producer is None:
                producer = _producers[key] = AMQPProducer(
                    queue, props, transactional=True, serializer=serializer)
                _close_at_exit()
    return producer


def _close_at_exit():
    global _atexit_registered
    if not _atexit_registered:
        atexit.register(close_producers)
        _atexit_registered = True


def close_producers() -> None:
    """Close the connections of the shared event producers."""
    with _lock:
        producers = list(_producers.values())
        _producers.clear()
    for producer in producers:
        try:
            producer.close()
        except PublishFailed:
            pass        # close() logged the unconfirmed messages


class AMQPEventCallback:
    """A consumer callback that notifies each received payload locally."""

    def __call__(self, payload: object) -> None:
        zope.event.notify(payload)
