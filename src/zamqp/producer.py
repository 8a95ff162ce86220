"""AMQPProducer: publishes serialized messages on one reused connection."""
from __future__ import annotations

import collections
import itertools
import logging
import math
import socket
import threading
import time
import uuid
from typing import TYPE_CHECKING
from typing import Any

import amqp
from amqp import exceptions as amqp_errors
from zope.interface import implementer

from zamqp import serializers
from zamqp import signing
from zamqp import transactional as _transactional
from zamqp import window as _window_module
from zamqp.backoff import Backoff
from zamqp.backoff import broker_away
from zamqp.connection import AMQPConnection
from zamqp.connection import CONNECTION_LOST
from zamqp.transport import set_write_timeout
from zamqp.exceptions import ConnectionFailed
from zamqp.fastpublish import ChannelWriter
from zamqp.exceptions import NotConfirmed
from zamqp.exceptions import PublishBlocked
from zamqp.exceptions import PublishFailed
from zamqp.interfaces import IProducer
from zamqp.logtext import broker_closed
from zamqp.status import ProducerStats
from zamqp import metrics as _metrics
from zamqp import tracing as _tracing

if TYPE_CHECKING:
    from types import TracebackType
    from typing import Iterable

    from zamqp.props import AMQPProps
    from zamqp.props import DeclareMode

logger = logging.getLogger(__name__)

#: Publish failures after which a new connection may succeed.
RETRYABLE = (OSError, amqp_errors.AMQPError)

_RETRY = (ConnectionFailed,) + RETRYABLE

#: Unconfirmed messages a producer keeps by default.
WINDOW = 1000

#: Message ids an ERROR line names at most (the first and last half).
ID_LIMIT = 6


def id_summary(ids, limit=ID_LIMIT):
    """``'3 message(s): a, b, c'``, or for more than ``limit`` ids the
    count with the first and last few: ``'1000 messages: a, b, c ...
    x, y, z'``."""
    ids = list(ids)
    if len(ids) <= limit:
        return f"{len(ids)} message(s): {', '.join(ids)}"
    half = limit // 2
    return (f"{len(ids)} messages: {', '.join(ids[:half])} ... "
            f"{', '.join(ids[-half:])}")


_STATE_TEXT = {_window_module.NACK: 'nacked by the broker',
               _window_module.TIMEOUT: 'not confirmed in time',
               _window_module.RETURNED: 'returned unroutable'}


class Batch:
    """Publishes now, waits for the broker's confirms once, at the end.

    Made by ``AMQPProducer.batch()``. Inside ``with producer.batch() as
    batch:`` every message this thread publishes through the producer
    (``batch(obj)``, ``producer(obj)``, ``publish_now``) is sent at once
    without waiting; leaving the block waits for all their confirms and
    raises NotConfirmed listing the messages that were nacked, returned
    or not confirmed in time. With ``confirm=False`` it only publishes.
    """

    def __init__(self, producer: AMQPProducer) -> None:
        self.producer = producer
        self.records = []
        self.outstanding = 0
        self.ids = []
        self._previous = None

    def __call__(self, obj: object, routing_key: str | None = None,
                 headers: dict[str, Any] | None = None) -> str:
        """Publish ``obj`` like the producer does; return its id."""
        message_id = self.producer(obj, routing_key, headers)
        self.ids.append(message_id)
        return message_id

    def add(self, record):
        record.batch = self
        self.records.append(record)
        self.outstanding += 1
        return record

    def discard(self, record):
        """Forget a message whose publishing raised already."""
        self.records.remove(record)
        record.resolve(_window_module.FAILED)

    def __enter__(self) -> Batch:
        local = self.producer._local
        self._previous = getattr(local, 'batch', None)
        local.batch = self
        return self

    def __exit__(self, exc_type: type[BaseException] | None,
                 exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.producer._local.batch = self._previous
        if exc_type is None:
            self.wait()
            return
        try:
            self.wait()
        except PublishFailed as failure:   # do not hide the first error
            logger.error('%s', failure)

    def wait(self) -> None:
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


class _Outstanding:
    """True while a record of ``records`` is unsettled (amortized O(1):
    records settle mostly in order)."""

    def __init__(self, records):
        self.records = records
        self.index = 0

    def __call__(self):
        records, index = self.records, self.index
        while index < len(records) and records[index].state is not None:
            index += 1
        self.index = index
        return index < len(records)


@implementer(IProducer)
class AMQPProducer:
    """Call it with any object to publish it to ``props.exchange``.

    The routing key is ``routing_key`` (default: ``queue``); fanout
    exchanges ignore it, direct and topic exchanges route by it.
    ``serializer`` names the serializer ('pickle' or 'json');
    ``compression`` ('zlib', 'bz2' or 'lzma'; default None) compresses
    bodies and names the method in the ``compression`` header, as kombu
    does (see docs/serialization.rst).
    ``persistent`` asks the broker to write messages to disk.

    The connection opens on the first call and is reused; calls from
    several threads are serialized by a lock. A call whose connection or
    channel died reconnects (with a jittered backoff, zamqp.backoff)
    until ``confirm_timeout`` passed, then raises PublishFailed, or
    ConnectionFailed when the broker could not be reached.

    Confirms (``confirm``):

    ``None`` (default): the channel is in publisher-confirm mode and the
    producer keeps every message it sent until the broker confirmed it,
    at most ``window`` of them (default 1000). A call returns as soon as
    its message is written; confirms are read as they arrive, before
    the next publish. A publish with a full window reads confirms until
    there is room, at most ``confirm_timeout`` seconds, then raises
    PublishFailed (the message was not taken). A message nobody waits
    for is kept until the broker confirms it: when the oldest
    unconfirmed message of a connection waited ``confirm_timeout`` for
    its confirm (and the broker does not block publishers, nor unblocked
    them less than ``confirm_timeout`` ago), the connection counts as
    stalled and is dropped; after a reconnect (backoff) the unconfirmed
    messages are published again first, in order, as often as it takes
    (so a receiver may see a message twice; its ``message_id`` tells).
    While messages are unconfirmed a keeper thread does this when no
    call does. A message is given up, logged at ERROR with its id, only
    when the broker nacks it, returns it (``mandatory=True``), or when
    ``flush()`` (and ``close()``, which flushes) end with it still
    unconfirmed: they raise NotConfirmed for it. A publish on commit
    (``publish_committed``) never waits for a broker that cannot be
    reached: its message waits in the window, unsent.

    ``True``: the same, and a call returns only once the broker
    confirmed its message; it raises NotConfirmed (a PublishFailed) when
    the broker nacks it, when no confirm came within ``confirm_timeout``
    (default: ``props.timeout``) and, with ``mandatory=True``, when no
    queue took it (returned unroutable).

    ``False``: fire and forget, no confirms: what the broker did not
    read before a connection was lost is gone, silently but for a
    WARNING that says how many messages may be lost.

    ``batch()`` and ``publish_many`` publish many messages and wait once
    for all their confirms. While the broker blocks publishers
    (``connection.blocked``: a memory or disk alarm) a publish waits at
    most ``confirm_timeout`` and raises PublishBlocked naming the
    broker's reason.

    With ``transactional=True`` a call made while the thread has an
    active transaction (the ``transaction`` package) builds the message
    and returns its id at once but publishes it only after a successful
    commit, and never on abort (see zamqp.transactional).
    """

    #: With ``transactional``: a call outside any transaction begins one
    #: of the implicit ``transaction.manager`` (as a ZODB change does) and
    #: waits for its commit, instead of publishing at once. True for the
    #: producers of ``<zamqp:producer>`` (zamqp.zope).
    begins_transaction = False
    #: Seconds ``publish_committed`` waits for another thread's publish.
    LOCK_WAIT = 0.5
    #: Seconds between the keeper thread's rounds.
    KEEP_INTERVAL = 0.25

    def __init__(self, queue: str, props: AMQPProps,
                 routing_key: str | None = None, serializer: str = 'pickle',
                 persistent: bool = False, transactional: bool = False,
                 confirm: bool | None = None,
                 confirm_timeout: float | None = None,
                 mandatory: bool = False, window: int = WINDOW,
                 declare: DeclareMode | None = None,
                 compression: str | None = None) -> None:
        if confirm not in (None, True, False):
            raise ValueError(f'confirm must be None, True or False, got '
                             f'{confirm!r}')
        self.queue = queue
        self.props = props
        self.routing_key = queue if routing_key is None else routing_key
        self.serializer = serializers.get(serializer)
        self.compression = serializers.check_compression(compression)
        self.delivery_mode = 2 if persistent else 1
        self.transactional = transactional
        self.confirm = confirm
        self.confirm_timeout = (props.timeout if confirm_timeout is None
                                else confirm_timeout)
        self.mandatory = mandatory
        self.stats = ProducerStats()
        self.window = _window_module.ConfirmWindow(window, self._report,
                                                   self.stats)
        self.backoff = Backoff(first=0.1, cap=5.0, refused_cap=1.0)
        self.connection = AMQPConnection(queue, props, mode='w',
                                         publisher=True, declare=declare)
        self._lock = threading.Lock()
        self._local = threading.local()
        self._channel = None        # the channel set up for publishing
        self._published = 0         # on this connection (confirm=False)
        self._opened = None
        self._ids = itertools.count(1)
        self._id_prefix = uuid.uuid4().hex[:12]
        self._unblocked_at = -math.inf  # monotonic time of the unblock
        self._down = False          # the broker could not be reached
        self._down_logged = False
        self._retry_at = 0.0        # when the keeper may reconnect
        self._keeper = None         # the keeper thread, while it runs
        self._connected_once = False    # reconnect only after a success
        self._closed = False        # close() runs
        self._later = collections.deque()   # records queued without lock
        self._nacked = False        # the broker nacked on this channel
        self._last_connection = None    # py-amqp's, of the last setup
        self._writer = None         # ChannelWriter of the channel in use
        _metrics.register(self)

    @property
    def timeout(self) -> float:
        """Seconds a publish may take (``confirm_timeout``)."""
        return self.confirm_timeout

    def __call__(self, message: object, routing_key: str | None = None,
                 headers: dict[str, Any] | None = None) -> str:
        msg = self.message(message, headers)
        key = self.routing_key if routing_key is None else routing_key
        if not (self.transactional and _transactional.defer(self, msg, key)):
            self.publish_now(msg, key)
        return msg.properties['message_id']

    def publish_now(self, msg: amqp.Message, routing_key: str) -> None:
        """Publish the amqp.Message ``msg`` (see ``message``) now.

        With ``confirm=True``, wait for its confirm, or leave that to
        the batch this thread has open on this producer.
        """
        if self.confirm is False:
            with self._lock:
                self._publish(msg, routing_key)
            return
        batch = getattr(self._local, 'batch', None)
        waits = self.confirm and batch is None
        with self._lock:
            now = time.monotonic()
            record = _window_module.Record(
                msg, routing_key, now + self.confirm_timeout,
                waited=waits or batch is not None)
            if batch is not None:
                batch.add(record)
            try:
                self._publish(msg, routing_key, record)
            except Exception:
                if batch is not None:
                    batch.discard(record)
                raise
            if waits:
                cause = self._await([record], lambda: record.state is None,
                                    record.deadline)
        if waits:
            self._check([record], cause)

    def batch(self) -> Batch:
        """A Batch: ``with producer.batch() as batch: batch(obj)``."""
        return Batch(self)

    def publish_many(self, objects: Iterable[object],
                     routing_key: str | None = None,
                     headers: dict[str, Any] | None = None) -> list[str]:
        """Publish every object, wait once for all confirms; return the
        message ids (NotConfirmed lists those that failed)."""
        with self.batch() as batch:
            for obj in objects:
                batch(obj, routing_key, headers)
        return batch.ids

    def message(self, obj: object,
                headers: dict[str, Any] | None = None) -> amqp.Message:
        """The py-amqp message that carries ``obj`` (signed when the
        props have a secret)."""
        extra = {} if headers is None else \
            {'application_headers': _checked(headers)}
        body = serializers.encode(self.serializer, obj, extra,
                                  self.compression)
        _tracing.inject(extra)
        msg = amqp.Message(
            body, delivery_mode=self.delivery_mode,
            message_id=f'{self._id_prefix}-{next(self._ids)}', **extra)
        signer = self.props.signer
        if signer is not None:
            properties = msg.properties
            properties['timestamp'] = int(time.time())
            headers = properties.setdefault('application_headers', {})
            headers[signing.HEADER] = signer.sign(msg.body, properties)
        return msg

    # publishing (under the lock)

    def _publish(self, msg, key, record=None):
        """Publish, reconnecting with backoff until the deadline."""
        deadline = time.monotonic() + self.confirm_timeout \
            if record is None else record.deadline
        while True:
            try:
                self._send(msg, key, record, deadline)
                return
            except _RETRY as exc:
                self._retry_or_raise(exc, deadline, msg)

    def _retry_or_raise(self, exc, deadline, msg=None):
        """After a failed attempt: drop the connection, wait a backoff
        delay and return, or raise once ``deadline`` would pass."""
        self.stats.error(broker_closed(exc) or exc)
        self._raise_if_undeclared(exc)
        if isinstance(exc, ConnectionFailed):
            if not exc.recoverable or not self._connected_once:
                raise exc       # a setting, or no broker from the start
        else:
            self._lost(exc)
        refused = broker_away(exc)
        delay = 0.0 if self._first_retry(exc) else \
            self.backoff.delay(refused=refused)
        if time.monotonic() + delay >= deadline:
            self._down = True
            if isinstance(exc, (ConnectionFailed, PublishFailed)):
                raise exc
            what = 'message ' + msg.properties['message_id'] \
                if msg is not None else 'waiting for confirms'
            raise PublishFailed(
                f"basic_publish: {what} to exchange "
                f"{self.props.exchange!r} on {self.props.url()} failed "
                f"within {self.confirm_timeout} s: {exc}") from exc
        if not isinstance(exc, ConnectionFailed):
            logger.warning('publish to %s on %s failed (%s); reconnecting',
                           self.props.exchange, self.props.url(),
                           broker_closed(exc) or exc)
        time.sleep(delay)

    def _raise_if_undeclared(self, exc):
        """A missing exchange (404) that zamqp may not declare comes
        back on every new connection: raise at once, do not retry."""
        mode = self.connection.declare_mode
        if mode is True or not isinstance(exc, amqp_errors.NotFound):
            return
        self._lost(exc)
        raise PublishFailed(
            f"basic_publish: exchange {self.props.exchange!r} does not "
            f"exist on {self.props.url()} ({broker_closed(exc) or exc}): "
            f"with declare={mode!r} zamqp does not declare it; declare it "
            f"on the broker (see docs/least-privilege.rst), or let zamqp "
            f"declare it (declare=True)") from exc

    def _first_retry(self, exc):
        """Reconnect at once after a connection that worked; back off
        while connecting fails."""
        first = not getattr(self, '_retrying', False)
        self._retrying = True
        return first and not isinstance(exc, ConnectionFailed)

    def _on_nack(self, *args):
        """A nack: RabbitMQ may nack every later publish on that channel
        (a quorum queue whose leader died), so the next publish or wait
        opens a new channel (zamqp.window.ConfirmWindow keeps what was
        nacked; what was not confirmed yet is sent again on it)."""
        self._nacked = True

    def _renew_after_nack(self):
        if self._channel is None:
            return
        self._nacked = False
        logger.warning('the broker nacked a message published to %r on '
                       '%s; publishing goes on on a new channel',
                       self.props.exchange, self.props.url())
        try:    # what the old channel confirms is not sent again
            self._drain(lambda: bool(self.window.pending),
                        time.monotonic() + min(self.confirm_timeout, 2.0))
        except CONNECTION_LOST as exc:
            self._lost(exc)
            return
        self.window.channel_lost()
        self._channel = None
        try:
            self.connection.new_channel()
        except CONNECTION_LOST as exc:
            self._lost(exc)

    def _send(self, msg, key, record, deadline):
        if self._nacked:
            self._renew_after_nack()
        channel = self._channel
        if channel is None or channel is not self.connection._channel:
            channel = self._setup(deadline)
        self.connection.poll()
        if record is None:
            self._write(channel, msg, key)
            self._published += 1
            self.stats.count('published')
            self._retrying = False
            return
        window = self.window
        if window.orphans or self._later:
            self._resend(deadline)
        now = time.monotonic()
        pending = window.pending
        if pending and pending[0].due <= now:
            self._check_stall(now)
        if window.full or self.connection.connection.blocked is not None:
            self._make_room(deadline, msg)
            now = time.monotonic()
        self._write(channel, msg, key)
        window.sent(record, now + self.confirm_timeout)
        self._retrying = False
        if self._keeper is None:
            self._keep()

    def _write(self, channel, msg, key):
        """Publish on ``channel`` (under the lock): py-amqp's
        basic_publish, fast where zamqp.fastpublish builds the frames."""
        writer = self._writer
        if writer is None or writer.channel is not channel:
            writer = self._writer = ChannelWriter(
                channel, self.props.exchange, self.mandatory)
        writer.publish(msg, key)

    def _setup(self, deadline):
        """Open the connection, put the channel in confirm mode and
        publish again what lost connections left unconfirmed."""
        channel = self.connection.channel
        conn = self.connection.connection
        set_write_timeout(conn.sock, max(0.05, self.confirm_timeout))
        conn.on_blocked = self._on_blocked
        conn.on_unblocked = self._on_unblocked
        channel.events['basic_return'].add(self._on_return)
        self._published = 0
        self._opened = time.time()
        if self._connected_once and conn is not self._last_connection:
            self.stats.count('reconnects')
        self._last_connection = conn
        self._connected_once = True
        if self._down:
            logger.info('connected to %s again; publishing to %r goes on',
                        self.props.url(), self.props.exchange)
        self._down = False
        self._down_logged = False
        if self.confirm is not False:
            window = self.window
            window.channel_lost()
            channel.events['basic_ack'].add(window.ack)
            channel.events['basic_nack'].add(window.nack)
            channel.events['basic_nack'].add(self._on_nack)
            self._nacked = False
            channel.confirm_select()
            readiness = self.connection._readiness
            if readiness is not None:
                readiness.on_ack = (channel.channel_id, window.ack)
            self._channel = channel
            self.backoff.reset()
            self._resend(deadline)
        self._channel = channel
        self.backoff.reset()
        return channel

    def _take_later(self):
        """Move the messages queued without the lock into the window."""
        later, window = self._later, self.window
        while later:
            window.queue(later.popleft())

    def _resend(self, deadline):
        """Publish again, in order, what lost connections left
        unconfirmed, and what waited for a connection (before anything
        new goes out). Resending does not grow the window; while the
        broker blocks publishers it waits up to ``deadline``."""
        if self._later:
            self._take_later()
        window = self.window
        channel = self._channel
        conn = self.connection.connection
        resent = queued = 0
        timeout = self.confirm_timeout
        while (record := window.next_orphan()):
            self.connection.poll()
            if conn.blocked is not None:
                self._make_room(deadline, room=False)
            if window.orphans and window.orphans[0] is record:
                self._write(channel, record.msg, record.key)
                window.orphans.popleft()
                if record.sends:
                    resent += 1
                else:
                    queued += 1
                window.sent(record, time.monotonic() + timeout)
        if resent:
            logger.warning(
                'published %d unconfirmed message(s) again on a new '
                'connection to %s (receivers may see them twice)',
                resent, self.props.url())
        if queued:
            logger.info('published %d message(s) that waited for a '
                        'connection to %s', queued, self.props.url())

    def _make_room(self, deadline, msg=None, room=True):
        """Read frames until the window has room (``room``) and the
        broker does not block publishing; raise once ``deadline``
        passed. A stalled connection raises (see ``_check_stall``)."""
        window = self.window
        conn = self.connection.connection
        while (room and window.full) or conn.blocked is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._stuck(msg)
            try:
                conn.drain_events(timeout=min(remaining, 1.0))
            except socket.timeout:
                pass
            self._check_stall(time.monotonic())

    def _check_stall(self, now):
        """Drop (raise) a connection on which the oldest unconfirmed
        message waits more than ``confirm_timeout`` for its confirm:
        for messages nobody waits on, a missing confirm means a dead or
        stalled connection, and they are published again on a new one.
        Not while the broker blocks publishers, nor within
        ``confirm_timeout`` of its unblocking: an alarm is no stall."""
        if not self.window.stalled(now):
            return
        conn = self.connection.connection
        if conn is None or conn.blocked is not None or \
                now - self._unblocked_at < self.confirm_timeout:
            return
        raise amqp_errors.RecoverableConnectionError(
            f'no confirm from the broker for {self.confirm_timeout} s '
            '(confirm_timeout): the connection seems stalled')

    def _stuck(self, msg):
        what = 'message ' + msg.properties['message_id'] \
            if msg is not None else 'messages'
        reason = self.connection.connection.blocked
        if reason is not None:
            return PublishBlocked(
                f"basic_publish: {what} to exchange {self.props.exchange!r}"
                f" not sent: {self.props.url()} blocks publishers "
                f"({reason!r}) and did not unblock within "
                f"{self.confirm_timeout} s (confirm_timeout); free memory "
                "or disk on the broker, or change its limits (raise "
                "vm_memory_high_watermark, lower disk_free_limit)", reason)
        return PublishFailed(
            f"basic_publish: {what} to exchange {self.props.exchange!r} "
            f"not sent: {len(self.window)} messages (window) are still "
            f"unconfirmed by {self.props.url()} after "
            f"{self.confirm_timeout} s (confirm_timeout); raise window or "
            "confirm_timeout, or check the broker")

    def _on_blocked(self, reason):
        logger.warning('%s blocks publishers (%s): publishing to %r waits '
                       'up to %s s per message, then raises PublishBlocked',
                       self.props.url(), reason, self.props.exchange,
                       self.confirm_timeout)

    def _on_unblocked(self):
        self._unblocked_at = time.monotonic()
        logger.info('%s unblocked publishers; publishing to %r goes on',
                    self.props.url(), self.props.exchange)

    def _on_return(self, exc, exchange, routing_key, message):
        message_id = message.properties.get('message_id')
        reply = f'{exc.reply_code} {exc.reply_text}'
        if self.confirm is not False:
            self.window.returned_message(message_id, reply)
        else:
            logger.warning('message %s to exchange %r was returned '
                           '(routing key %r): %s', message_id, exchange,
                           routing_key, reply)

    def _lost(self, exc=None):
        """Drop the connection; note what may be lost with it."""
        if self.confirm is False and self._published and \
                self._channel is not None:
            logger.warning(
                'connection to %s lost (%s) without publisher confirms: up '
                'to %d message(s) published to %r since the connection '
                'opened at %s may be lost (confirm=False gives no way to '
                'tell which arrived)', self.props.url(), exc,
                self._published, self.props.exchange,
                time.strftime('%H:%M:%S', time.localtime(self._opened)))
        self._published = 0
        self._channel = None
        self.window.channel_lost()
        self.connection.close()

    def _report(self, records, state):
        """Log messages that failed with nobody waiting for them."""
        if state == _window_module.RETURNED:
            why = 'returned unroutable (%s)' % records[0].reply
        else:
            why = _STATE_TEXT.get(state, state)
        ids = [r.message_id for r in records]
        self.stats.error(f'{id_summary(ids)} {why}')
        logger.error('%s to exchange %r on %s %s', id_summary(ids),
                     self.props.exchange, self.props.url(), why)
        logger.debug('message ids: %s', ', '.join(ids))

    # publish on commit (no waiting in the request thread)

    def publish_committed(self, msg: amqp.Message,
                          routing_key: str) -> None:
        """Publish ``msg`` for a transaction that committed (see
        zamqp.transactional), without holding up the thread.

        A default producer (``confirm=None``) tries at most once: when
        the broker cannot be reached (or another thread holds the
        producer for more than ``LOCK_WAIT`` seconds), the message
        joins the window unsent and goes out first on the next
        connection, which a background thread keeps trying to make
        (backoff). While the producer knows the broker is unreachable
        it does not even try. Raises PublishFailed (the message was not
        taken) when the window is full; a message still unsent or
        unconfirmed at ``close()`` is logged at ERROR with its id. Other
        producers publish as ``publish_now`` does.
        """
        if self.confirm is not None or \
                getattr(self._local, 'batch', None) is not None:
            self.publish_now(msg, routing_key)
            return
        record = _window_module.Record(
            msg, routing_key, time.monotonic() + self.confirm_timeout)
        if not self._lock.acquire(timeout=self.LOCK_WAIT):
            self._room_for(record, len(self._later))
            self._later.append(record)
            self._keep()
            return
        try:
            if self._down:
                self._queue(record)
                return
            try:
                self._send(msg, routing_key, record, record.deadline)
            except _RETRY as exc:
                if isinstance(exc, ConnectionFailed) and \
                        not exc.recoverable:
                    raise
                self._went_down(exc)
                self._queue(record)
        finally:
            self._lock.release()

    def _room_for(self, record, extra=0):
        if len(self.window) + extra >= self.window.size:
            raise PublishFailed(
                f"basic_publish: message {record.message_id} to exchange "
                f"{self.props.exchange!r} not taken: {self.props.url()} "
                f"is unreachable and {len(self.window) + extra} messages "
                "(window) wait for it already")

    def _queue(self, record):
        """Under the lock: keep ``record`` unsent for the next
        connection."""
        self._room_for(record, len(self._later))
        self.window.queue(record)
        self._keep()

    def _went_down(self, exc):
        """Under the lock: a publish or connection attempt failed; the
        keeper thread reconnects after a backoff delay."""
        self.stats.error(broker_closed(exc) or exc)
        if not isinstance(exc, ConnectionFailed):
            self._lost(exc)
        first = self._first_retry(exc)
        refused = broker_away(exc)
        self._retry_at = time.monotonic() + (
            0.0 if first else self.backoff.delay(refused=refused))
        self._down = True
        if not self._down_logged:
            self._down_logged = True
            logger.warning(
                'publishing to %r on %s failed (%s): %d message(s) wait '
                'for a new connection, tried in the background',
                self.props.exchange, self.props.url(),
                broker_closed(exc) or exc,
                len(self.window) + len(self._later))

    # the keeper: reconnects and resends while nobody publishes

    def _keep(self):
        """Start the keeper thread unless it runs (or we are closed)."""
        if self._keeper is not None or self._closed or \
                self.confirm is not None:
            return
        keeper = threading.Thread(target=self._keep_going, daemon=True,
                                  name=f'zamqp-producer-{self.queue}')
        self._keeper = keeper
        keeper.start()

    def _keep_going(self):
        """While messages are unconfirmed: every ``KEEP_INTERVAL``
        seconds read what the broker sent, drop a stalled connection,
        reconnect (after the backoff delay) and publish again what is
        unconfirmed. Ends when nothing is left (publishing starts it
        again) or at close()."""
        while True:
            time.sleep(self.KEEP_INTERVAL)
            with self._lock:
                if self._keeper is not threading.current_thread():
                    return      # close() let it go
                if self._closed or not (len(self.window) or self._later):
                    self._keeper = None
                    return
                if time.monotonic() >= self._retry_at:
                    self._tend()

    def _tend(self):
        """Under the lock, in the keeper: one round of its work."""
        now = time.monotonic()
        try:
            channel = self._channel
            if channel is None or channel is not self.connection._channel:
                self._setup(now)
            else:
                if self.window.orphans or self._later:
                    self._resend(now)
                self._read_now()
                self._check_stall(time.monotonic())
        except PublishFailed:
            pass            # blocked: resend later, connection kept
        except _RETRY as exc:
            self._went_down(exc)
        except Exception:
            logger.exception('zamqp producer keeper for %r failed',
                             self.props.exchange)
            self._retry_at = time.monotonic() + self.backoff.cap

    def _read_now(self):
        """Handle the frames the broker sent, without waiting."""
        if self.connection._readiness is not None:
            self.connection.poll()
            return
        conn = self.connection.connection     # TLS: py-amqp reads
        try:
            while True:
                conn.drain_events(timeout=0)
        except socket.timeout:
            pass

    # confirms (called with records of one batch or one message)

    def _confirm(self, records, outstanding):
        with self._lock:
            cause = self._await(records, outstanding,
                                max(r.deadline for r in records))
        self._check(records, cause)

    def _await(self, records, outstanding, deadline):
        """Under the lock: read confirms until ``outstanding()`` is 0 or
        ``deadline`` passed, reconnecting and publishing again what a
        lost connection left unconfirmed. Returns the error that ended
        the wait early; what is left unsettled is given up."""
        cause = None
        while outstanding():
            try:
                if self._nacked:
                    self._renew_after_nack()
                if self._channel is None or \
                        self._channel is not self.connection._channel:
                    self._setup(deadline)
                elif self.window.orphans or self._later:
                    self._resend(deadline)
                self._drain(outstanding, deadline)
                break
            except _RETRY as exc:
                cause = exc
                try:
                    self._retry_or_raise(exc, deadline)
                except (ConnectionFailed, PublishFailed) as final:
                    cause = final
                    break
            except PublishFailed as exc:     # blocked while resending
                cause = exc
                break
        if outstanding():
            self.window.give_up(records)
        else:
            cause = None
        return cause

    def _drain(self, outstanding, deadline):
        connection = self.connection.connection
        while outstanding():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            try:
                connection.drain_events(timeout=min(remaining, 1.0))
            except socket.timeout:
                pass
            if self.confirm is None:
                self._check_stall(time.monotonic())

    def status(self) -> dict[str, Any]:
        """What the producer last knew, for status pages: ``state``
        (``idle``: never connected; ``connected``; ``disconnected``: the
        connection was lost, the next publish or the keeper reconnects;
        ``down``: the broker could not be reached; ``closing``) and
        ``unconfirmed``, the messages not yet confirmed by the broker
        (or waiting to be sent), with the counters and ``last_error`` of
        ``self.stats`` (zamqp.status.ProducerStats). It asks the broker
        nothing."""
        if self._closed:
            state = 'closing'
        elif self._down:
            state = 'down'
        elif self._channel is not None:
            state = 'connected'
        elif self._connected_once:
            state = 'disconnected'
        else:
            state = 'idle'
        return dict(self.stats.snapshot(), state=state,
                    unconfirmed=len(self.window) + len(self._later))

    def flush(self, timeout: float | None = None) -> None:
        """Wait until the broker confirmed every message sent so far.

        At most ``timeout`` seconds (default: ``confirm_timeout``),
        reconnecting and publishing again what a lost connection left
        unconfirmed (or what waited for a connection). Raises
        NotConfirmed listing the messages that were nacked, returned or
        not confirmed in time: they leave the window, not retried. A
        no-op with ``confirm=False``.
        """
        if self.confirm is False:
            return
        timeout = self.confirm_timeout if timeout is None else timeout
        with self._lock:
            self._take_later()
            records = self.window.unsettled()
            if not records:
                return
            for record in records:
                record.waited = True
            outstanding = _Outstanding(records)
            cause = self._await(records, outstanding,
                                time.monotonic() + timeout)
        self._check(records, cause)

    def _check(self, records, cause=None):
        """Raise NotConfirmed unless every record was confirmed."""
        failed = [r for r in records if r.state != _window_module.ACK]
        if not failed:
            return
        nacked = [r.message_id for r in failed
                  if r.state == _window_module.NACK]
        returned = [(r.message_id, r.key, r.reply)
                    for r in failed if r.state == _window_module.RETURNED]
        unconfirmed = [r.message_id for r in failed
                       if r.state in (None, _window_module.TIMEOUT,
                                      _window_module.FAILED)]
        text = self._failure_text(len(records), nacked, returned,
                                  unconfirmed, cause)
        self.stats.error(text)
        raise NotConfirmed(text, nacked, returned, unconfirmed) from cause

    def _failure_text(self, total, nacked, returned, unconfirmed, cause):
        parts = []
        if nacked:
            parts.append(f"nacked by the broker: {id_summary(nacked)}")
        for message_id, key, reply in returned[:ID_LIMIT]:
            parts.append(f'returned unroutable ({reply}): {message_id} '
                         f'with routing key {key!r}')
        if len(returned) > ID_LIMIT:
            parts.append(f'{len(returned) - ID_LIMIT} more returned')
        if unconfirmed:
            why = (f'within {self.confirm_timeout} s' if cause is None
                   else f'({cause})')
            parts.append(f"not confirmed {why}: {id_summary(unconfirmed)}")
        count = len(nacked) + len(returned) + len(unconfirmed)
        what = ('a message' if total == 1 else
                f'{count} of {total} messages')
        return (f'basic_publish: {what} to exchange '
                f'{self.props.exchange!r} on {self.props.url()} failed: '
                + '; '.join(parts))

    def close(self, timeout: float | None = None) -> None:
        """Flush (see ``flush``; ``timeout`` default
        ``confirm_timeout``), then close the connection.

        Messages that were not confirmed (or never sent) are logged at
        ERROR (their count, first and last ids; all of them at DEBUG),
        and NotConfirmed (listing all) is raised after the connection
        is closed.
        """
        self._closed = True
        failure = None
        try:
            self.flush(timeout)
        except PublishFailed as exc:
            logger.error('closing the producer for %r: %s',
                         self.props.exchange, exc)
            ids = getattr(exc, 'message_ids', None)
            if ids:
                logger.debug('message ids: %s', ', '.join(ids))
            failure = exc
        with self._lock:
            self._published = 0
            self._channel = None
            self.window.channel_lost()
            self.window.orphans.clear()
            self._later.clear()
            self.connection.close()
            self._down = False
            keeper, self._keeper = self._keeper, None
            self._closed = False
        if keeper is not None and keeper is not threading.current_thread():
            keeper.join(2 * self.KEEP_INTERVAL)
        if failure is not None:
            raise failure

    def __enter__(self) -> AMQPProducer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None,
                 exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.close()
            return
        try:
            self.close()
        except PublishFailed:
            pass            # logged by close; do not hide the first error

    def __repr__(self):
        return (f'<AMQPProducer {self.props.exchange!r} key='
                f'{self.routing_key!r} {self.serializer.name} '
                f'{self.props.url()}>')
