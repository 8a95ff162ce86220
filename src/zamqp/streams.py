"""Durable broadcasts: stream queues and the readers that go through them.

A stream (RabbitMQ 3.9+) is a durable, append-only, replicated log. A
stream reader reads it from its own position, kept in an offset store
(zamqp.offsets or an IOffsetStore), so a reader that was away gets
every message published meanwhile, in order. The position advances
only after the callback returned (or the message was dead-lettered):
at least once in plain Python, exactly once in Zope, where the position
is committed in the handler's transaction (zamqp.zope.offsets).
"""
from __future__ import annotations

import datetime
import logging
import re
import time
from typing import TYPE_CHECKING
from typing import Any

from zamqp.exceptions import ConfigurationError
from zamqp.exceptions import MessageRefused
from zamqp.logtext import loggable
from zamqp.offsets import offset_store
from zamqp.queues import QueueDeclaration

if TYPE_CHECKING:
    from typing import Union


    Start = Union[str, int, float, datetime.datetime]

logger = logging.getLogger(__name__)

#: The header in which the broker gives each message's offset.
OFFSET_HEADER = 'x-stream-offset'
#: Where a reader without a saved position begins.
STARTS = ('next', 'first', 'last')
#: RabbitMQ's time units of x-max-age and of offset intervals.
INTERVAL = re.compile(r'^([1-9][0-9]{0,8})([YMDhms])$')
#: Retention by default: a week, 1 GB, in segments of 50 MB (the broker
#: deletes whole segments, the oldest first, once one is past a limit).
MAX_AGE = '7D'
MAX_LENGTH_BYTES = 1_000_000_000
MAX_SEGMENT_SIZE_BYTES = 50_000_000
#: Seconds between the tries of a failing callback: the first, doubled
#: each time, at most the last.
RETRY_FIRST, RETRY_CAP = 0.1, 2.0
#: Seconds between saves of the position while messages flow.
SAVE_INTERVAL = 1.0


def check_interval(value: object, setting: str) -> str:
    """``value`` if it is a RabbitMQ interval such as '7D' or '12h'
    (Y, M, D, h, m, s)."""
    if not isinstance(value, str) or not INTERVAL.match(value):
        raise ConfigurationError(
            f'{setting}={value!r} is not an interval: give a whole number '
            "and a unit, Y (years), M (months), D (days), h, m or s, "
            "such as '7D' or '12h'")
    return value


def _size(value, setting):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(
            f'{setting}={value!r} is not a number of bytes: give a whole '
            'number from 1, or None for no limit')
    return value


def start_argument(start: Start) -> Any:
    """The ``x-stream-offset`` that makes a reader without a position
    begin at ``start``: 'next' (messages published from now on),
    'first' (the oldest message kept), 'last' (the last chunk written),
    an offset (a whole number), a timezone-aware datetime or an ISO
    8601 timestamp with a timezone ('2026-12-01T09:00:00+00:00': the
    first message stored at or after it) or an interval back from now
    ('1h', '7D': see check_interval)."""
    if isinstance(start, str):
        if start in STARTS or INTERVAL.match(start):
            return start
        try:
            moment = datetime.datetime.fromisoformat(
                start.replace('Z', '+00:00'))
        except ValueError:
            moment = None
        if moment is None:
            raise ConfigurationError(
                f'start={start!r} is not understood: give next, first, '
                "last, an offset, an interval such as '1h' or '7D', or "
                "an ISO timestamp with a timezone such as "
                "'2026-12-01T09:00:00+00:00'")
        start = moment
    if isinstance(start, datetime.datetime):
        if start.tzinfo is None:
            raise ConfigurationError(
                f'start={start.isoformat()!r} has no timezone: give one '
                '(datetime.timezone.utc, or +00:00 in the text), so that '
                'every instance means the same moment')
        # py-amqp sends naive datetimes as timestamps, read as UTC
        return start.astimezone(datetime.timezone.utc).replace(tzinfo=None)
    if isinstance(start, int) and not isinstance(start, bool) and start >= 0:
        return start
    raise ConfigurationError(
        f'start={start!r} is not understood: give next, first, last, an '
        "offset (a whole number from 0), an interval such as '1h', or a "
        'timezone-aware datetime')


def check_reader(reader: object) -> str:
    """``reader`` if it can name a reader: a non-empty text of at most
    200 printable characters."""
    if not isinstance(reader, str) or not reader.strip() or \
            len(reader) > 200 or not reader.isprintable():
        raise ConfigurationError(
            f'reader={reader!r} cannot name a stream reader: give each '
            'reader (each instance of a deployment) a name of its own '
            "that stays the same across restarts, such as 'instance1'")
    return reader


class StreamDeclaration(QueueDeclaration):
    """A stream queue: durable, shared by every reader, never exclusive
    or auto-deleted, with its retention (``max_age``, an interval;
    ``max_length_bytes``, ``max_segment_size_bytes``; None: no limit).
    The broker refuses a declaration whose retention differs from the
    stream's: every reader of a stream must give the same."""

    def __init__(self, name, max_age=MAX_AGE,
                 max_length_bytes=MAX_LENGTH_BYTES,
                 max_segment_size_bytes=MAX_SEGMENT_SIZE_BYTES,
                 dead_letter_exchange=None, queue_arguments=None,
                 binding_arguments=None, declare=None):
        if max_age is not None:
            check_interval(max_age, 'max_age')
        self.max_age = max_age
        self.max_length_bytes = _size(max_length_bytes, 'max_length_bytes')
        self.max_segment_size_bytes = _size(max_segment_size_bytes,
                                            'max_segment_size_bytes')
        if (queue_arguments or {}).get('x-queue-type', 'stream') != 'stream':
            raise ConfigurationError(
                'queue_arguments give x-queue-type '
                f"{queue_arguments['x-queue-type']!r}, but stream=True "
                'reads a stream: leave x-queue-type out')
        super().__init__(name, True, True, None, 0, dead_letter_exchange,
                         queue_arguments, binding_arguments, declare)
        self.queue_type = 'stream'

    def arguments(self):
        arguments = dict(self.queue_arguments or {})
        arguments['x-queue-type'] = 'stream'
        for key, value in (
                ('x-max-age', self.max_age),
                ('x-max-length-bytes', self.max_length_bytes),
                ('x-stream-max-segment-size-bytes',
                 self.max_segment_size_bytes)):
            if value is not None:
                arguments.setdefault(key, value)
        return arguments


def message_offset(message) -> int:
    """The stream offset the broker gave ``message``; MessageRefused if
    it has none a stream would give (its properties could not be read,
    or it did not come from a stream)."""
    headers = (getattr(message, 'properties', None) or {}).get(
        'application_headers') or {}
    offset = headers.get(OFFSET_HEADER)
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise MessageRefused(
            f'the message has no {OFFSET_HEADER} header a stream gives '
            f'(found {loggable(offset, 60)}): not from a stream, or its '
            'properties could not be read')
    return offset


class StreamReader:
    """The position of reader ``reader`` in stream ``stream``.

    ``position`` is the offset of the last message settled: its callback
    returned, or it was dead-lettered (consumer thread, in delivery
    order); it is what ``save()`` writes to ``store`` and where the
    next connection goes on from (the one after it). ``done`` is the
    last offset whose callback returned (worker thread): a message at
    or before it that comes again (a reconnect delivers what was
    handled but not settled; a broker could begin a resumed reader at
    the start of a chunk) is skipped, not handled again.
    """

    def __init__(self, stream: str, reader: str, offsets: object,
                 start: Start = 'next') -> None:
        self.stream = stream
        self.reader = check_reader(reader)
        self.store = offset_store(offsets)
        self.start = start
        self.start_argument = start_argument(start)
        self.position = None        # settled (consumer thread)
        self.done = None            # handled (worker thread)
        self.saved = None           # what the store holds, as far as known
        self.last_offset = None     # the last offset delivered
        self.expected = None        # the offset a session begins with
        self.pinned = None          # start as a moment, once subscribed
        self.gap = None             # (offset asked for, offset delivered)
        self.tail = None            # the stream's newest offset, as seen
        self.locked = False
        self._saved_at = time.monotonic()
        self._save_error = None

    # the consumer thread

    def acquire(self) -> None:
        """Lock the reader's name in the store, where the store can."""
        lock = getattr(self.store, 'lock', None)
        if lock is not None:
            lock(self.stream, self.reader)
            self.locked = True

    def release(self) -> None:
        """Unlock what ``acquire`` locked (nothing if it failed)."""
        unlock = getattr(self.store, 'unlock', None)
        if unlock is not None and self.locked:
            unlock(self.stream, self.reader)
            self.locked = False

    def consume_arguments(self) -> dict[str, Any]:
        """The ``basic_consume`` arguments of a new session: on from the
        message after the position (loaded from the store the first
        time), else from ``start``."""
        if self.position is None:
            saved = self.store.load(self.stream, self.reader)
            if saved is not None:
                self.position = self.saved = saved
                if self.done is None or self.done < saved:
                    self.done = saved
        if self.position is None:
            self.expected = None
            if self.pinned is not None:
                return {OFFSET_HEADER: self.pinned}
            self.pinned = pinned(self.start_argument)
            return {OFFSET_HEADER: self.start_argument}
        self.expected = self.position + 1
        return {OFFSET_HEADER: self.expected}

    def delivered(self, message) -> None:
        """Note a delivery. The first of a session that comes after the
        offset asked for leaves ``gap`` set: offsets are not dense (the
        broker gives some to chunks that hold no message), so whether
        retention removed messages is told by the stream's first offset
        (``removed``)."""
        try:
            offset = message_offset(message)
        except MessageRefused:
            return
        self.last_offset = offset
        expected, self.expected = self.expected, None
        if expected is not None and offset > expected:
            self.gap = (expected, offset)

    def removed(self, expected: int, first: int | None) -> int:
        """Warn if the stream's first offset ``first`` is past the
        offset ``expected`` the reader went on from: retention removed
        messages it had not read. Return how many offsets it removed (at
        most that many messages), 0 if none."""
        if first is None or first <= expected:
            return 0
        missed = first - expected
        logger.warning(
            'reader %r of stream %r: the stream\'s retention removed up to '
            '%d message(s) after its position %d before it read them (the '
            'stream begins at offset %d now; the reader goes on from '
            'there); make the retention (max_age, max_length_bytes) cover '
            'the longest time a reader may be away', self.reader,
            self.stream, missed, expected - 1, first)
        return missed

    def settled(self, message) -> None:
        """The consumer is done with ``message`` (handled, skipped or
        dead-lettered): move the position to it."""
        try:
            offset = message_offset(message)
        except MessageRefused:
            return
        if self.position is None or offset > self.position:
            self.position = offset

    def save_due(self, idle: bool) -> bool:
        """Whether to save the position now: it moved, and the reader is
        idle or the last save is SAVE_INTERVAL seconds old (a save
        fsyncs twice: saving every batch cost a fifth of the rate)."""
        return self.position is not None and self.position != self.saved \
            and (idle or time.monotonic() - self._saved_at >= SAVE_INTERVAL)

    def save(self) -> bool:
        """Write the position to the store if it moved; log (once per
        distinct error) and return False if the store fails: the reader
        goes on, and a restart may then see those messages again."""
        position = self.position
        if position is None or position == self.saved:
            return True
        try:
            self.store.save(self.stream, self.reader, position)
        except Exception as exc:    # noqa: BLE001 - the reader goes on
            text = f'{type(exc).__name__}: {exc}'
            if text != self._save_error:
                logger.error(
                    'reader %r of stream %r: cannot save its position %d '
                    '(%s); it goes on and tries again, but a restart now '
                    'would see the messages since its last saved position '
                    'again', self.reader, self.stream, position,
                    loggable(text, 300))
            self._save_error = text
            return False
        if self._save_error is not None:
            logger.info('reader %r of stream %r: its position is saved '
                        'again', self.reader, self.stream)
        self._save_error = None
        self.saved = position
        self._saved_at = time.monotonic()
        return True

    # the worker thread

    def seen(self, offset: int) -> bool:
        """Whether the message at ``offset`` was handled already."""
        return self.done is not None and offset <= self.done

    def handled(self, offset: int) -> None:
        if self.done is None or offset > self.done:
            self.done = offset

    def seen_tail(self, offset: int | None) -> None:
        """The stream's newest offset was found to be at least
        ``offset``."""
        if offset is not None and (self.tail is None or offset > self.tail):
            self.tail = offset

    def lag(self) -> int | None:
        """How many offsets the stream has past the position (at least;
        None before anything was delivered)."""
        tail = self.tail
        if self.last_offset is not None and (tail is None or
                                             self.last_offset > tail):
            tail = self.last_offset
        if tail is None:
            return None
        return max(tail - (-1 if self.position is None else self.position),
                   0)

    def status(self) -> dict[str, Any]:
        return {'reader': self.reader, 'position': self.position,
                'saved_position': self.saved,
                'last_offset': self.last_offset, 'lag': self.lag()}

    def __repr__(self):
        return (f'<StreamReader {self.reader!r} of {self.stream!r} at '
                f'{self.position}>')


#: Seconds of the units of an interval (months and years approximated).
UNITS = {'s': 1, 'm': 60, 'h': 3600, 'D': 86400, 'M': 30 * 86400,
         'Y': 365 * 86400}
#: Seconds a pinned start is moved back for the clocks of client and
#: broker, which timestamps the chunks it writes.
CLOCK_MARGIN = 1.0


def pinned(argument):
    """The ``x-stream-offset`` that later sessions of a reader that has
    no position yet use: the moment a relative start ('next', 'last',
    an interval) meant when the reader first subscribed, so that a
    reconnect before its first message skips nothing; None if the
    argument is absolute already ('first', an offset, a moment)."""
    if argument == 'first' or not isinstance(argument, str):
        return None
    back = CLOCK_MARGIN
    match = INTERVAL.match(argument)
    if match:
        back += int(match.group(1)) * UNITS[match.group(2)]
    now = datetime.datetime.now(datetime.timezone.utc)
    return (now - datetime.timedelta(seconds=back)).replace(tzinfo=None)


def retry_delay(attempt: int) -> float:
    """Seconds before try ``attempt`` (1: the first retry)."""
    return min(RETRY_FIRST * 2 ** (attempt - 1), RETRY_CAP)
