"""Delivering received messages to handlers and zope events, and relaying
local zope events to AMQP, without echoing received events back.

Object events of content (``IObjectEvent`` of a persistent object) are
relayed as references and rebuilt in the receiver's database before they
are delivered: see zamqp.zope.references.
"""
import contextlib
import logging
import pickle
import threading

import zope.component
import zope.event
import zope.interface
from zope.component.hooks import getSite
from zope.interface import implementer

from zamqp.exceptions import ConfigurationError
from zamqp.exceptions import ZAMQPError
from zamqp.interfaces import IAllowRules
from zamqp.interfaces import IConsumerSpec
from zamqp.interfaces import IMessageReceived
from zamqp.interfaces import IProducer
from zamqp.zope import references

logger = logging.getLogger(__name__)
_local = threading.local()


@implementer(IMessageReceived)
class MessageReceived:
    """A message a configured consumer received.

    ``reference`` is the ObjectEventReference the message carried, if
    it carried one; ``body`` is then the event rebuilt from it in the
    receiver's database (rebuilt again for each try of the transaction).
    """

    def __init__(self, consumer, body, message, site=None, reference=None):
        self.consumer = consumer
        self.body = body
        self.message = message
        self.site = site
        self.reference = reference

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

    A body that is an object event reference (zamqp.zope.references) is
    checked first (its event class must be allowed: by ``allow``, the
    allow rules of the consumer spec of this name, ``<zamqp:allow>``,
    or zamqp's list of object events), else the message is refused;
    then, inside ``in_context``, the event is rebuilt with the objects
    of ``event.site`` (the current component site without a context)
    and takes the body's place.
    """

    def __init__(self, name, handler=None, events=False, in_context=None,
                 allow=None):
        self.name = name
        self.handler = handler
        self.events = events
        self.in_context = in_context
        self.allow = allow

    def __call__(self, body, message):
        reference = None
        if references.is_reference(body):
            reference = references.decode(body, self.allow_rules())
        event = MessageReceived(self.name, body, message, reference=reference)
        if self.in_context is None:
            self.deliver(event)
        else:
            self.in_context(self.deliver, event)

    def allow_rules(self):
        """The rules event classes of references are checked with."""
        if self.allow is not None:
            return self.allow
        spec = zope.component.queryUtility(IConsumerSpec, self.name)
        if spec is not None and hasattr(spec, 'allow_rules'):
            return spec.allow_rules()
        rules = references.EVENT_CLASSES
        for other in zope.component.getAllUtilitiesRegisteredFor(
                IAllowRules):
            rules = rules | other
        return rules

    def deliver(self, event):
        with receiving():
            if event.reference is not None:
                site = event.site if event.site is not None else getSite()
                event.body = event.reference.event(site, self.allow_rules())
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


class BroadcastError(ConfigurationError):
    """A broadcast event cannot travel: it (or something it holds) is
    neither picklable nor an object event of content sent by reference.
    The message names the broadcast and what to do."""


class Relay:
    """A zope event handler that publishes events with a named producer.

    Events this process received over AMQP are not relayed again (nor
    events rebuilt from a received reference, whenever notified), so two
    instances relaying the same interface do not echo each other.

    An IObjectEvent of content (a persistent or acquisition-wrapped
    object, see ``references.by_reference``) is published as an object
    event reference; any other event as it is. An event that cannot be
    serialized raises BroadcastError (logged at ERROR too), naming the
    broadcast (``for_``, when given, and the producer) and the way out;
    the request or transaction that notified it fails, rather than the
    instances silently going out of step.
    """

    def __init__(self, producer, for_=None):
        self.producer = producer
        self.for_ = for_

    def __call__(self, event):
        if is_received() or references.is_received_reference(event):
            return
        producer = zope.component.getUtility(IProducer, self.producer)
        try:
            if references.by_reference(event):
                body = references.encode(event)
            else:
                body = event
            producer(body)
        except ZAMQPError as exc:
            if not isinstance(exc, references.CannotTravel):
                raise
            self.cannot_travel(event, exc)
        except (pickle.PicklingError, TypeError, AttributeError, ValueError,
                RecursionError) as exc:
            if not _unserializable(producer, body):
                raise                       # not the event's fault
            self.cannot_travel(event, exc)

    def cannot_travel(self, event, exc):
        error = BroadcastError(
            f'{self.broadcast_name(event)} cannot send {_short(event)}: '
            f'{type(exc).__name__}: {exc}. A broadcast event travels '
            'serialized: give it plain values (strings, numbers, dates, '
            'lists, dicts) and classes the consumers allow, or broadcast '
            'object events (IObjectEvent) of persistent content, which '
            'travel as references (see the docs on content events); or '
            'narrow the for attribute to events that can travel')
        logger.error('%s', error)
        raise error from exc

    def broadcast_name(self, event):
        """``<zamqp:broadcast for=... producer=...>`` of this relay: its
        ``for_``, else the interface it is registered for (an error path
        only: the registry is searched)."""
        for_ = self.for_ if self.for_ is not None else self.registered_for()
        if for_ is not None:
            for_ = getattr(for_, '__identifier__', for_)
            return f'<zamqp:broadcast for={for_!r} ' \
                   f'producer={self.producer!r}>'
        provided = ', '.join(i.__identifier__ for i in
                             zope.interface.providedBy(event).interfaces())
        return (f'<zamqp:broadcast producer={self.producer!r}> (the event '
                f'provides {provided or "no interface"})')

    def registered_for(self):
        """The interface this relay is registered as a handler for."""
        registries = [zope.component.getSiteManager()]
        if registries[0] is not zope.component.getGlobalSiteManager():
            registries.append(zope.component.getGlobalSiteManager())
        for registry in registries:
            for registration in registry.registeredHandlers():
                if registration.handler is self and \
                        len(registration.required) == 1:
                    return registration.required[0]
        return None

    def __repr__(self):
        return f'<Relay to producer {self.producer!r}>'


def _unserializable(producer, body):
    """Whether ``producer``'s serializer fails on ``body`` (asked again on
    the error path only, so that other errors keep their own name)."""
    serializer = getattr(producer, 'serializer', None)
    dumps = getattr(serializer, 'dumps', pickle.dumps)
    try:
        dumps(body)
    except Exception:                       # noqa: BLE001
        return True
    return False


def _short(value, limit=120):
    try:
        text = repr(value)
    except Exception:                       # noqa: BLE001
        text = object.__repr__(value)
    return text if len(text) <= limit else text[:limit] + '...'
