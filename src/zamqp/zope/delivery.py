"""Delivering received messages to handlers and zope events, and relaying
local zope events to AMQP, without echoing received events back."""
import contextlib
import logging
import threading

import zope.component
import zope.event
from zope.interface import implementer

from zamqp.interfaces import IMessageReceived
from zamqp.interfaces import IProducer

logger = logging.getLogger('zamqp')
_local = threading.local()


@implementer(IMessageReceived)
class MessageReceived:
    """A message a configured consumer received."""

    def __init__(self, consumer, body, message, site=None):
        self.consumer = consumer
        self.body = body
        self.message = message
        self.site = site

    def __repr__(self):
        return f'<MessageReceived by {self.consumer!r}: {self.body!r}>'


@contextlib.contextmanager
def receiving():
    """Mark events notified in this block as received from AMQP."""
    _local.receiving = True
    try:
        yield
    finally:
        _local.receiving = False


def is_received():
    """True while this thread notifies an event that came over AMQP."""
    return getattr(_local, 'receiving', False)


class Delivery:
    """The callback of a configured consumer: ``(body, message)`` in.

    Calls ``handler(event)`` with an IMessageReceived; without a
    handler notifies that event; with ``events=True`` notifies the body
    itself, as AMQPEventCallback does. ``in_context(deliver, event)``,
    when given, runs the delivery (for example inside a ZODB
    transaction on a site).
    """

    def __init__(self, name, handler=None, events=False, in_context=None):
        self.name = name
        self.handler = handler
        self.events = events
        self.in_context = in_context

    def __call__(self, body, message):
        event = MessageReceived(self.name, body, message)
        if self.in_context is None:
            self.deliver(event)
        else:
            self.in_context(self.deliver, event)

    def deliver(self, event):
        with receiving():
            if self.events:
                zope.event.notify(event.body)
            elif self.handler is not None:
                self.handler(event)
            else:
                zope.event.notify(event)

    def __repr__(self):
        what = ('events' if self.events else
                self.handler if self.handler is not None else
                'IMessageReceived')
        return f'<Delivery {self.name!r} to {what!r}>'


class Relay:
    """A zope event handler that publishes events with a named producer.

    Events this process received over AMQP are not relayed again, so two
    instances relaying the same interface do not echo each other.
    """

    def __init__(self, producer):
        self.producer = producer

    def __call__(self, event):
        if is_received():
            return
        zope.component.getUtility(IProducer, self.producer)(event)

    def __repr__(self):
        return f'<Relay to producer {self.producer!r}>'
