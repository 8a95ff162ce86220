"""AMQPProducer: publishes serialized messages on one reused connection."""
import collections
import itertools
import logging
import math
import socket
import threading
import time
import uuid

import amqp
from amqp import exceptions as amqp_errors
from zope.interface import implementer

from zamqp import serializers
from zamqp import signing
from zamqp import transactional as _transactional
from zamqp.connection import AMQPConnection
from zamqp.exceptions import ConnectionFailed
from zamqp.exceptions import NotConfirmed
from zamqp.exceptions import PublishFailed
from zamqp.interfaces import IProducer

logger = logging.getLogger('zamqp')

#: Publish failures after which a new connection may succeed.
RETRYABLE = (OSError, amqp_errors.AMQPError)


class _Record:
    """One published message waiting for its confirm."""

    __slots__ = ('msg', 'key', 'tracker', 'state', 'reply', 'sends',
                 'batch')

    def __init__(self, msg, key, batch):
        self.msg = msg
        self.key = key
        self.batch = batch
        self.tracker = None
        self.state = None       # None, 'ack', 'nack', 'returned'
        self.reply = None
        self.sends = 0

    @property
    def message_id(self):
        return self.msg.properties.get('message_id')

    def resolve(self, state):
        if self.state is None:
            self.state = state
            if self.batch is not None:
                self.batch.outstanding -= 1


class _Tracker:
    """Delivery tags of one confirm-mode channel and their records.

    Fed by py-amqp's channel events (basic_ack, basic_nack,
    basic_return); used only under the producer's lock.
    """

    def __init__(self, channel, confirm):
        self.channel = channel
        self.next_tag = 1
        self.pending = collections.OrderedDict()    # tag -> _Record
        self.returned = {}                          # message id -> reply
        channel.events['basic_return'].add(self.on_return)
        if confirm:
            channel.events['basic_ack'].add(self.on_ack)
            channel.events['basic_nack'].add(self.on_nack)
            channel.confirm_select()

    def sent(self, record):
        record.tracker = self
        record.sends += 1
        self.pending[self.next_tag] = record
        self.next_tag += 1

    def on_ack(self, tag, multiple):
        self._settle(tag, multiple, 'ack')

    def on_nack(self, tag, multiple):
        self._settle(tag, multiple, 'nack')

    def _settle(self, tag, multiple, state):
        pending = self.pending
        if not multiple:
            records = [pending.pop(tag)] if tag in pending else []
        else:
            records = []
            while pending and next(iter(pending)) <= tag:
                records.append(pending.popitem(last=False)[1])
        for record in records:
            reply = self.returned.pop(record.message_id, None)
            if reply is not None and state == 'ack':
                record.reply = reply
                record.resolve('returned')
            else:
                record.resolve(state)

    def on_return(self, exc, exchange, routing_key, message):
        message_id = message.properties.get('message_id')
        reply = f'{exc.reply_code} {exc.reply_text}'
        if self.channel.events.get('basic_ack'):
            self.returned[message_id] = reply
        else:
            logger.warning('message %s to exchange %r was returned '
                           '(routing key %r): %s', message_id, exchange,
                           routing_key, reply)

    def forget(self, records):
        """Stop tracking ``records`` (they timed out)."""
        for tag in [t for t, r in self.pending.items() if r in records]:
            del self.pending[tag]


class Batch:
    """Publishes now, waits for the broker's confirms once, at the end.

    Made by ``AMQPProducer.batch()``. Inside ``with producer.batch() as
    batch:`` every message this thread publishes through the producer
    (``batch(obj)``, ``producer(obj)``, ``publish_now``) is sent at once
    without waiting; leaving the block waits for all their confirms and
    raises NotConfirmed listing the messages that were nacked, returned
    or not confirmed in time. Without ``confirm`` it only publishes.
    """

    def __init__(self, producer):
        self.producer = producer
        self.records = []
        self.outstanding = 0
        self.ids = []
        self._previous = None

    def __call__(self, obj, routing_key=None, headers=None):
        """Publish ``obj`` like the producer does; return its id."""
        message_id = self.producer(obj, routing_key, headers)
        self.ids.append(message_id)
        return message_id

    def add(self, msg, key):
        record = _Record(msg, key, self)
        self.records.append(record)
        self.outstanding += 1
        return record

    def discard(self, record):
        """Forget a message whose publishing raised already."""
        self.records.remove(record)
        record.resolve('failed')

    def __enter__(self):
        local = self.producer._local
        self._previous = getattr(local, 'batch', None)
        local.batch = self
        return self

    def __exit__(self, exc_type, exc, tb):
        self.producer._local.batch = self._previous
        if exc_type is None:
            self.wait()
            return
        try:
            self.wait()
        except PublishFailed as failure:   # do not hide the first error
            logger.error('%s', failure)

    def wait(self):
        """Wait for the confirms of this batch's messages."""
        if self.records:
            self.producer._confirm(self.records, self.outstanding_count)

    def outstanding_count(self):
        return self.outstanding


def _checked(headers):
    """A copy of ``headers``; ValueError for a value RabbitMQ refuses."""
    for name, value in headers.items():
        _check_value(name, value)
    return dict(headers)


def _check_value(name, value):
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(
            f"header {name!r} is {value}: RabbitMQ closes the connection "
            "on NaN and infinite floats in headers; send it as a string")
    if isinstance(value, dict):
        for key, item in value.items():
            _check_value(f'{name}.{key}', item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _check_value(name, item)


@implementer(IProducer)
class AMQPProducer:
    """Call it with any object to publish it to ``props.exchange``.

    The routing key is ``routing_key`` (default: ``queue``); fanout
    exchanges ignore it, direct and topic exchanges route by it.
    ``serializer`` names the serializer ('pickle' or 'json').
    ``persistent`` asks the broker to write messages to disk.

    The connection opens on the first call and is reused; calls from
    several threads are serialized by a lock. A call whose connection or
    channel died reconnects once and tries again, then raises
    PublishFailed; a broker that cannot be reached raises ConnectionFailed.

    With ``confirm=True`` the channel is in publisher-confirm mode and a
    call returns only once the broker confirmed the message; it raises
    NotConfirmed (a PublishFailed) when the broker nacks it, when no
    confirm came within ``confirm_timeout`` seconds (default:
    ``props.timeout``) and, with ``mandatory=True``, when no queue took
    it (returned unroutable). ``batch()`` and ``publish_many`` publish
    many messages and wait once for all their confirms.

    With ``transactional=True`` a call made while the thread has an
    active transaction (the ``transaction`` package) builds the message
    and returns its id at once but publishes it only after a successful
    commit, and never on abort (see zamqp.transactional).
    """

    def __init__(self, queue, props, routing_key=None, serializer='pickle',
                 persistent=False, transactional=False, confirm=False,
                 confirm_timeout=None, mandatory=False):
        self.queue = queue
        self.props = props
        self.routing_key = queue if routing_key is None else routing_key
        self.serializer = serializers.get(serializer)
        self.delivery_mode = 2 if persistent else 1
        self.transactional = transactional
        self.confirm = confirm
        self.confirm_timeout = (props.timeout if confirm_timeout is None
                                else confirm_timeout)
        self.mandatory = mandatory
        self.connection = AMQPConnection(queue, props, mode='w',
                                         publisher=True)
        self._lock = threading.Lock()
        self._local = threading.local()
        self._tracker = None
        self._ids = itertools.count(1)
        self._id_prefix = uuid.uuid4().hex[:12]

    def __call__(self, message, routing_key=None, headers=None):
        msg = self.message(message, headers)
        key = self.routing_key if routing_key is None else routing_key
        if not (self.transactional and _transactional.defer(self, msg, key)):
            self.publish_now(msg, key)
        return msg.properties['message_id']

    def publish_now(self, msg, routing_key):
        """Publish the amqp.Message ``msg`` (see ``message``) now.

        With ``confirm``, wait for its confirm, or leave that to the
        batch this thread has open on this producer.
        """
        if not (self.confirm or self.mandatory):
            with self._lock:
                self._publish(msg, routing_key)
            return
        batch = getattr(self._local, 'batch', None)
        with self._lock:        # callbacks of other threads' waits count
            record = _Record(msg, routing_key, None) if batch is None \
                else batch.add(msg, routing_key)
            try:
                self._publish(msg, routing_key, record)
            except Exception:
                if batch is not None:
                    batch.discard(record)
                raise
            if batch is None:
                cause = self._await([record], lambda: record.state is None)
        if batch is None:
            self._check([record], cause)

    def batch(self):
        """A Batch: ``with producer.batch() as batch: batch(obj)``."""
        return Batch(self)

    def publish_many(self, objects, routing_key=None, headers=None):
        """Publish every object, wait once for all confirms; return the
        message ids (NotConfirmed lists those that failed)."""
        with self.batch() as batch:
            for obj in objects:
                batch(obj, routing_key, headers)
        return batch.ids

    def message(self, obj, headers=None):
        """The py-amqp message that carries ``obj`` (signed when the
        props have a secret)."""
        extra = {} if headers is None else \
            {'application_headers': _checked(headers)}
        msg = amqp.Message(
            self.serializer.dumps(obj),
            content_type=self.serializer.content_type,
            delivery_mode=self.delivery_mode,
            message_id=f'{self._id_prefix}-{next(self._ids)}', **extra)
        signer = self.props.signer
        if signer is not None:
            properties = msg.properties
            properties['timestamp'] = int(time.time())
            headers = properties.setdefault('application_headers', {})
            headers[signing.HEADER] = signer.sign(msg.body, properties)
        return msg

    def _publish(self, msg, key, record=None):
        for attempt in (1, 2):
            try:
                return self._send(msg, key, record)
            except ConnectionFailed:
                raise
            except RETRYABLE as exc:
                self._lost()
                if attempt == 2:
                    raise PublishFailed(
                        f"basic_publish: message "
                        f"{msg.properties['message_id']} to exchange "
                        f"{self.props.exchange!r} on {self.props.url()} "
                        f"failed twice: {exc}") from exc
                logger.warning('publish to %s on %s failed (%s); '
                               'reconnecting', self.props.exchange,
                               self.props.url(), exc)

    def _send(self, msg, key, record=None):
        channel = self.connection.channel
        self.connection.poll()
        if record is None:
            channel.basic_publish(msg, self.props.exchange, key)
            return
        tracker = self._tracker
        if tracker is None or tracker.channel is not channel:
            tracker = self._tracker = _Tracker(channel, self.confirm)
        channel.basic_publish(msg, self.props.exchange, key,
                              mandatory=self.mandatory)
        if self.confirm:
            tracker.sent(record)
        else:
            record.resolve('ack')

    def _lost(self):
        self.connection.close()
        self._tracker = None

    # confirms (called with records of one batch or one message)

    def _confirm(self, records, outstanding):
        with self._lock:
            cause = self._await(records, outstanding)
        self._check(records, cause)

    def _await(self, records, outstanding):
        """Under the lock: read confirms until ``outstanding()`` is 0 or
        ``confirm_timeout`` passed; resend once what a lost connection
        left unconfirmed. Returns the error that ended the wait early."""
        deadline = time.monotonic() + self.confirm_timeout
        cause = None
        for attempt in (1, 2):
            try:
                self._resend_lost(records)
                self._drain(outstanding, deadline)
                cause = None        # what remains, timed out
                break
            except ConnectionFailed as exc:
                cause = exc
                break
            except RETRYABLE as exc:
                self._lost()
                cause = exc
                if attempt == 1:
                    logger.warning('waiting for confirms from %s failed '
                                   '(%s); reconnecting', self.props.url(),
                                   exc)
        if outstanding() and self._tracker is not None:
            self._tracker.forget(
                set(r for r in records if r.state is None))
        return cause

    def _resend_lost(self, records):
        for record in records:
            if record.state is None and record.tracker is not self._tracker:
                if record.sends > 1:
                    continue        # twice lost: reported unconfirmed
                self._send(record.msg, record.key, record)

    def _drain(self, outstanding, deadline):
        tracker = self._tracker
        if not outstanding() or tracker is None:
            return
        connection = self.connection.connection
        while outstanding():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            try:
                connection.drain_events(timeout=remaining)
            except socket.timeout:
                return

    def _check(self, records, cause=None):
        """Raise NotConfirmed unless every record was confirmed."""
        failed = [r for r in records if r.state != 'ack']
        if not failed:
            return
        nacked = [r.message_id for r in failed if r.state == 'nack']
        returned = [(r.message_id, r.key, r.reply)
                    for r in failed if r.state == 'returned']
        unconfirmed = [r.message_id for r in failed if r.state is None]
        raise NotConfirmed(self._failure_text(
            len(records), nacked, returned, unconfirmed, cause),
            nacked, returned, unconfirmed) from cause

    def _failure_text(self, total, nacked, returned, unconfirmed, cause):
        parts = []
        if nacked:
            parts.append(f"nacked by the broker: {', '.join(nacked)}")
        for message_id, key, reply in returned:
            parts.append(f'returned unroutable ({reply}): {message_id} '
                         f'with routing key {key!r}')
        if unconfirmed:
            why = (f'within {self.confirm_timeout} s' if cause is None
                   else f'({cause})')
            parts.append(f"not confirmed {why}: {', '.join(unconfirmed)}")
        count = len(nacked) + len(returned) + len(unconfirmed)
        what = ('a message' if total == 1 else
                f'{count} of {total} messages')
        return (f'basic_publish: {what} to exchange '
                f'{self.props.exchange!r} on {self.props.url()} failed: '
                + '; '.join(parts))

    def close(self):
        with self._lock:
            self._lost()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def __repr__(self):
        return (f'<AMQPProducer {self.props.exchange!r} key='
                f'{self.routing_key!r} {self.serializer.name} '
                f'{self.props.url()}>')
