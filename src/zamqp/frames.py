"""A tolerant, bounded inbound frame handler for consuming connections.

py-amqp turns frames into methods and messages in a closure built by
``amqp.method_framing.frame_handler``. Two things about it hurt a
consumer:

* Content it cannot decode raises inside ``drain_events``: a header
  table timestamp out of Python's range, a shortstr property that is not
  UTF-8, an unknown field type byte, tables nested deep enough for a
  RecursionError, a routing key that is not UTF-8. RabbitMQ passes such
  messages on, and the exception ends the consumer's session; in ack
  mode the message goes back to the queue and ends the next session too.
* It assembles every body in memory before anyone can look at its size.

``install(connection, max_size)`` replaces the handler of an open
connection with a ``FrameHandler``. For well-formed frames it does what
py-amqp's does (it decodes with py-amqp's own ``Message`` and
``_load_properties``); it differs only where py-amqp would raise for the
content or where a body is larger than ``max_size``:

* A Basic.Deliver, Basic.GetOk or Basic.Return whose content header
  cannot be decoded is passed on as an ``amqp.Message`` with empty
  ``properties``, its raw body and ``zamqp_fault`` set to the reason.
  So are header tables or arrays nested more than ``HEADER_DEPTH``
  levels (checked before decoding, without recursion).
* Shortstr method arguments that are not UTF-8 (exchange, routing key)
  are passed on with the bad bytes shown as ``\\xNN`` escapes, and a
  fault.
* A body announced larger than ``max_size`` is not assembled: its frames
  are counted and dropped as they arrive, and the message is passed on
  with ``body = b''`` and a fault. Memory stays at about one frame.

Every message carries ``zamqp_fault`` (None for good ones) and
``zamqp_key``, a fingerprint of the raw content header taken before it is
decoded (the same delivery redelivered has the same key). Only framing
errors raise, as py-amqp's AMQPError subclasses.
"""
from collections import defaultdict
from struct import error as StructError
from struct import unpack_from
from zlib import crc32

from amqp import VERSION as _AMQP_VERSION
from amqp import spec
from amqp.channel import Channel
from amqp.connection import Connection
from amqp.basic_message import Message
from amqp.exceptions import FrameSyntaxError
from amqp.exceptions import UnexpectedFrame

from zamqp.limits import too_large

__all__ = ('HEADER_DEPTH', 'FrameHandler', 'InboundMessage', 'install')

#: Deepest nesting of tables and arrays accepted in application headers,
#: the headers table itself being level 1. Deeper ones make the message a
#: fault before py-amqp's recursive decoder sees them. AMQP users put
#: flat tables in headers; RabbitMQ's own x-death is three levels deep.
HEADER_DEPTH = 32

DELIVER = spec.Basic.Deliver
GET_OK = spec.Basic.GetOk
RETURN = spec.Basic.Return
_CONTENT_METHODS = frozenset((DELIVER, GET_OK, RETURN))

#: Names of the arguments of the content methods, for fault reasons.
_ARG_NAMES = {
    DELIVER: ('consumer_tag', 'delivery_tag', 'redelivered', 'exchange',
              'routing_key'),
    GET_OK: ('delivery_tag', 'redelivered', 'exchange', 'routing_key',
             'message_count'),
    RETURN: ('reply_code', 'reply_text', 'exchange', 'routing_key'),
}
_METHOD_NAMES = {DELIVER: 'Basic.Deliver', GET_OK: 'Basic.GetOk',
                 RETURN: 'Basic.Return'}

# Sizes of the fixed-size field values in tables, as py-amqp reads them
# (serialization._read_item): 's' is RabbitMQ's 16-bit int, 'D' a scale
# octet and a 32-bit value, 'V' void.
_FIXED = {ord(k): v for k, v in {
    't': 1, 'b': 1, 'B': 1, 's': 2, 'U': 2, 'u': 2, 'I': 4, 'i': 4,
    'f': 4, 'L': 8, 'l': 8, 'd': 8, 'T': 8, 'D': 5, 'V': 0}.items()}
# py-amqp before 5.4 (5.3.1 is the newest for Python 3.9) reads 's' as a
# short string: an octet length, then that many bytes.
_SHORTSTR = ord('s') if _AMQP_VERSION[:2] < (5, 4) else None
if _SHORTSTR is not None:
    del _FIXED[_SHORTSTR]
_SIZED = frozenset(b'Sx')      # a 32-bit length, then that many bytes
_TABLE, _ARRAY = ord('F'), ord('A')
_CONTINUED = ('the property flags continue into a second word (bit 0), '
              'which Basic does not define')


class InboundMessage(Message):
    """py-amqp's Message, with zamqp's two attributes defaulting to
    None (no store per message for good ones)."""

    __slots__ = ()
    zamqp_fault = None
    zamqp_header = None     # the raw content header payload

    @property
    def zamqp_key(self):
        """``(body size, CRC-32 of the raw content header)``, None before
        the header came: the same for a redelivery of the same content,
        known without decoding anything."""
        header = self.zamqp_header
        if header is None:
            return None
        return self.body_size, crc32(header)


def install(connection, max_size=None, max_depth=HEADER_DEPTH):
    """Make ``connection`` (an open amqp.Connection with no message half
    received) read frames with a FrameHandler; return the handler."""
    handler = FrameHandler(connection, connection.on_inbound_method,
                           max_size=max_size, max_depth=max_depth)
    connection.on_inbound_frame = handler.on_frame
    return handler


class FrameHandler:
    """py-amqp's frame handler, tolerant of content it cannot decode and
    bounded by ``max_size`` (None: no limit).

    ``on_frame(frame)`` takes ``(frame_type, channel, payload)`` as read
    by the transport and calls ``callback(channel, method_sig, args,
    message)`` as py-amqp's does; it returns True when it called it.
    ``current`` is ``(channel, delivery_tag, zamqp_key)`` of the message
    being assembled or handed to the callback, else None: after an
    exception from the callback it names the delivery that caused it.
    """

    def __init__(self, connection, callback, max_size=None,
                 max_depth=HEADER_DEPTH):
        self.connection = connection
        self.callback = callback
        self.max_size = max_size
        self.max_depth = max_depth
        self.expected = defaultdict(_method_frame)  # channel -> type
        self.partial = {}           # channel -> message being assembled
        self.discarding = set()     # channels whose body is dropped
        self.faults = 0             # messages passed on with a fault
        self.discarded = 0          # body bytes dropped (over max_size)
        self.on_frame = self._make_on_frame()

    def __call__(self, frame):
        return self.on_frame(frame)

    @property
    def current(self):
        current = self._dispatching()
        if current is None:
            if not self.partial:
                return None
            current = next(reversed(self.partial.items()))
        channel, message = current
        return channel, _delivery_tag(message), message.zamqp_key

    def _make_on_frame(self):
        # Everything the hot path uses is a local of this closure; the
        # rare cases are methods of the handler.
        handler = self
        connection = self.connection
        callback = self.callback
        expected = self.expected
        partial = self.partial
        discarding = self.discarding
        max_size = (1 << 64) if self.max_size is None else self.max_size
        # below the headers table, each level takes a type byte F or A
        # and a length: 5 bytes at least. Shorter headers, and those with
        # fewer F and A bytes than levels, need no look at their depth.
        max_depth = self.max_depth
        deep = (1 << 64) if max_depth is None else 14 + 5 * (max_depth - 1)
        header_fault = self._header_fault
        bad_args = self._bad_args
        current_channel = current = None      # the message being dispatched

        def dispatching():
            return None if current is None else (current_channel, current)

        def set_dispatching(channel, msg):
            """For zamqp.fastconsume: ``msg`` is handed to the callback
            now (None: it returned)."""
            nonlocal current_channel, current
            current_channel, current = channel, msg

        self._dispatching = dispatching
        self.set_dispatching = set_dispatching

        def on_frame(frame, unpack_from=unpack_from,
                     Message=InboundMessage,
                     content_methods=_CONTENT_METHODS,
                     StructError=StructError):
            nonlocal current_channel, current
            frame_type, channel, buf = frame
            connection.bytes_recv += 1
            want = expected[channel]
            if frame_type != want and frame_type != 8:
                raise UnexpectedFrame(
                    'Received frame {} while expecting type: {}'.format(
                        frame_type, want))
            if frame_type == 3:
                msg = partial[channel]
                received = msg.body_received + len(buf)
                msg.body_received = received
                if received < msg.body_size:
                    if channel in discarding:
                        handler.discarded += len(buf)
                    else:
                        msg._pending_chunks.append(buf)
                    return False
                if channel in discarding:
                    discarding.discard(channel)
                    handler.discarded += len(buf)
                    msg.body = b''
                else:
                    chunks = msg._pending_chunks
                    if chunks:
                        chunks.append(buf)
                        msg.body = b''.join(chunks)
                        chunks.clear()
                    else:
                        msg.body = buf
                msg.ready = True
            elif frame_type == 2:
                msg = partial[channel]
                try:
                    class_id, body_size, flags = unpack_from(
                        '>HxxQH', buf, 0)
                except StructError:
                    raise FrameSyntaxError(
                        f'content header of {len(buf)} bytes on channel '
                        f'{channel}: too short for a body size and '
                        f'property flags') from None
                msg.body_size = body_size
                msg.zamqp_header = buf
                if (len(buf) > deep and buf[12] & 0x20
                        and buf.count(b'F') + buf.count(b'A') >= max_depth):
                    header_fault(msg, buf, class_id)
                else:
                    try:
                        if flags & 1:
                            raise ValueError(_CONTINUED)
                        msg._load_properties(class_id, buf, 12)
                    except Exception as exc:    # RecursionError too
                        header_fault(msg, buf, class_id, exc)
                if body_size > max_size:
                    handler._oversized(channel, msg)
                if body_size:
                    expected[channel] = 3
                    return False
                msg.ready = True
            elif frame_type == 1:
                try:
                    method_sig = unpack_from('>HH', buf, 0)
                except StructError:
                    raise FrameSyntaxError(
                        f'method frame of {len(buf)} bytes on channel '
                        f'{channel}') from None
                if method_sig in content_methods:
                    msg = Message(frame_method=method_sig, frame_args=buf)
                    if buf[3] != 60:          # not Deliver
                        handler._check_args(channel, msg)
                    partial[channel] = msg
                    expected[channel] = 2
                    return False
                try:
                    callback(channel, method_sig, buf, None)
                except UnicodeDecodeError as exc:
                    bad_args(channel, method_sig, buf, None, exc)
                return True
            else:
                return False        # a heartbeat (bytes_recv counted it)
            expected[channel] = 1
            del partial[channel]
            current_channel, current = channel, msg
            try:
                callback(channel, msg.frame_method, msg.frame_args, msg)
            except UnicodeDecodeError as exc:
                bad_args(channel, msg.frame_method, msg.frame_args, msg, exc)
            current = None
            return True

        return on_frame

    # the rare cases

    def _header_fault(self, msg, buf, class_id, exc=None):
        """Pass ``msg`` on with empty properties and a fault."""
        if exc is None and buf[13] & 1:
            exc = ValueError(_CONTINUED)
        if exc is None:
            if self.max_depth is not None and _too_deep(
                    buf, self.max_depth):
                reason = (f'cannot decode the content header: its header '
                          f'tables or arrays nest more than '
                          f'{self.max_depth} levels (HEADER_DEPTH)')
            else:       # many F and A bytes but shallow: decode after all
                try:
                    msg._load_properties(class_id, buf, 12)
                    return
                except Exception as error:
                    exc = error
        if exc is not None:
            reason = (f'cannot decode the content header ({len(buf)} '
                      f'bytes): {_describe(exc)}')
        msg.properties = {}
        self._fault(msg, reason)

    def _fault(self, msg, reason):
        old = msg.zamqp_fault
        if old is None:
            self.faults += 1
        msg.zamqp_fault = reason if old is None else f'{old}; {reason}'

    def _oversized(self, channel, msg):
        self._fault(msg, too_large(msg.body_size, self.max_size))
        if msg.body_size:
            self.discarding.add(channel)

    def _arg_format(self, channel, method_sig):
        conn = self.connection
        owner = conn if channel == 0 else \
            (getattr(conn, 'channels', None) or {}).get(channel)
        methods = getattr(owner, '_METHODS', None) or (
            Connection._METHODS if channel == 0 else Channel._METHODS)
        method = methods.get(method_sig)
        return getattr(method, 'args', None)

    def _check_args(self, channel, msg):
        """Before a GetOk or Return reaches py-amqp (which pops a waiting
        basic_get before it decodes): make bad shortstrs decodable."""
        fmt = self._arg_format(channel, msg.frame_method)
        if not fmt:
            return
        args, bad = sanitize_args(fmt, msg.frame_args)
        if bad:
            msg.frame_args = args
            self._fault(msg, _args_reason(msg.frame_method, bad))

    def _bad_args(self, channel, method_sig, buf, msg, exc):
        """The callback raised UnicodeDecodeError: if py-amqp could not
        decode the method's arguments (it does so before it calls any
        listener), call it again with decodable ones; else re-raise."""
        fmt = self._arg_format(channel, method_sig)
        if not fmt:
            raise exc
        args, bad = sanitize_args(fmt, buf)
        if not bad:
            raise exc
        if msg is not None:
            msg.frame_args = args
            self._fault(msg, _args_reason(method_sig, bad))
        self.callback(channel, method_sig, args, msg)


def _method_frame():
    return 1


def _delivery_tag(msg):
    args = msg.frame_args
    try:
        if msg.frame_method == DELIVER:
            return unpack_from('>Q', args, 5 + args[4])[0]
        if msg.frame_method == GET_OK:
            return unpack_from('>Q', args, 4)[0]
    except (StructError, IndexError, TypeError):
        pass
    return None


def _describe(exc):
    text = str(exc)
    if len(text) > 200:
        text = text[:197] + '...'
    return f'{type(exc).__name__}: {text}' if text else type(exc).__name__


def _args_reason(method_sig, bad):
    names = _ARG_NAMES.get(method_sig, ())
    fields = ', '.join(names[i] if i < len(names) else f'argument {i + 1}'
                       for i in bad)
    method = _METHOD_NAMES.get(method_sig, f'method {method_sig}')
    return (f'cannot decode {method}: {fields} not UTF-8 (passed on with '
            r'\xNN escapes)')


def sanitize_args(fmt, buf, offset=4):
    """``(args, bad)``: the method frame ``buf`` with every shortstr and
    longstr argument of ``fmt`` (py-amqp's argument format) that is not
    UTF-8 replaced by its text with ``\\xNN`` escapes (a shortstr cut to
    255 bytes), and the indexes of those arguments. FrameSyntaxError if
    ``buf`` is too short for ``fmt``."""
    out = [buf[:offset]]
    bad = []
    bits = 0
    try:
        for i, p in enumerate(fmt):
            if p == 'b':
                if not bits:
                    out.append(buf[offset:offset + 1])
                    offset += 1
                    bits = 8
                bits -= 1
                continue
            bits = 0
            if p in 'sS':
                if p == 's':
                    size, head = buf[offset], 1
                else:
                    size, = unpack_from('>I', buf, offset)
                    head = 4
                start = offset + head
                raw = buf[start:start + size]
                if len(raw) < size:
                    raise IndexError(offset)
                offset = start + size
                try:
                    raw.decode('utf-8', 'surrogatepass')
                except UnicodeDecodeError:
                    bad.append(i)
                    text = raw.decode('utf-8', 'backslashreplace')
                    raw = text.encode('ascii', 'backslashreplace')
                    if p == 's':
                        raw = raw[:255]
                        out.append(bytes((len(raw),)))
                    else:
                        out.append(len(raw).to_bytes(4, 'big'))
                    out.append(raw)
                    continue
                out.append(buf[start - head:offset])
                continue
            if p in 'xFA':
                size, = unpack_from('>I', buf, offset)
                size += 4
            else:
                size = {'o': 1, 'B': 2, 'l': 4, 'f': 4, 'L': 8,
                        'T': 8}[p]
            if offset + size > len(buf):
                raise IndexError(offset)
            out.append(buf[offset:offset + size])
            offset += size
    except (IndexError, StructError):
        raise FrameSyntaxError(
            f'method arguments cut short ({len(buf)} bytes for {fmt!r})'
        ) from None
    out.append(buf[offset:])
    return b''.join(out), bad


def _table_offset(buf):
    """Offset of the application headers table in a Basic content
    header, or None."""
    flags = buf[12] << 8 | buf[13]
    if not flags & 0x2000:
        return None
    offset = 14
    if flags & 0x8000:
        offset += 1 + buf[offset]
    if flags & 0x4000:
        offset += 1 + buf[offset]
    return offset


def _too_deep(buf, limit):
    """Whether the application headers of the content header ``buf`` nest
    tables and arrays more than ``limit`` levels, read as py-amqp reads
    them but with a stack instead of recursion. Malformed or unknown
    input ends the walk with False: py-amqp's decoder then fails on it."""
    try:
        offset = _table_offset(buf)
        if offset is None:
            return False
        size, = unpack_from('>I', buf, offset)
        offset += 4
        ends = [offset + size]          # where each open container ends
        tables = [True]                 # whether it is a table (has keys)
        fixed, sized = _FIXED, _SIZED
        while ends:
            if offset >= ends[-1]:
                ends.pop()
                tables.pop()
                continue
            if tables[-1]:
                offset += 1 + buf[offset]           # the key
            ftype = buf[offset]
            offset += 1
            step = fixed.get(ftype)
            if step is not None:
                offset += step
            elif ftype in sized:
                size, = unpack_from('>I', buf, offset)
                offset += 4 + size
            elif ftype == _SHORTSTR:
                offset += 1 + buf[offset]
            elif ftype == _TABLE or ftype == _ARRAY:
                if len(ends) >= limit:
                    return True
                size, = unpack_from('>I', buf, offset)
                offset += 4
                ends.append(offset + size)
                tables.append(ftype == _TABLE)
            else:
                return False
    except (IndexError, StructError):
        return False
    return False
