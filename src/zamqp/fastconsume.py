"""A consume fast path: frames parsed from one read buffer, in one pass.

py-amqp reads a frame with three ``recv`` calls (header, payload, frame
end), each under ``having_timeout`` (two ``settimeout`` calls), and a
delivery is three frames or more. :class:`BufferReader` instead takes
what the socket holds with one ``recv`` (up to ``RECV_SIZE`` bytes) and
walks the complete frames in it:

* A complete *delivery group* -- Basic.Deliver, its content header and
  every body frame, all in the buffer, on a channel with no message half
  received, properties without the continuation flag, body within
  ``max_size``, tables shallow enough to need no depth check, arguments
  that are UTF-8 -- is turned into an :class:`zamqp.frames.InboundMessage`
  here and handed to the consumer's callback as py-amqp's
  ``Channel._on_basic_deliver`` would (``channel``, ``delivery_info``,
  ``auto_decode``), when the channel is in the plain state that path
  assumes (open, not closing, no one-shot waiter for Basic.Deliver, the
  standard listener, a callback for the consumer tag).
* Every other frame -- heartbeats, other methods, deliveries cut by the
  end of the buffer or outside the common case -- goes, unchanged, to the
  connection's :class:`zamqp.frames.FrameHandler` (``on_frame``), exactly
  as py-amqp's ``blocking_read`` would pass it after ``read_frame``.

Contract: for any byte stream, the messages handed to callbacks (body,
every property, delivery_info, channel, ``zamqp_fault``, the raw header),
the frame handler's state, ``bytes_recv`` and the exceptions raised are
those of py-amqp's ``drain_events`` with the FrameHandler installed
(tests/test_fastconsume.py checks this differentially). Bytes not parsed
yet are in the transport's ``_read_buffer`` whenever the frame handler
runs, when something raises and when ``read`` returns, so py-amqp's own
reads (a ``channel.close``, a ``basic_cancel`` waiting for its reply) go
on where this left off. The consumer callbacks of fast deliveries run
before the buffer is brought up to date: they must not read from the
connection (zamqp's Session.take appends the message to a list). A
frame that does not end in 0xCE, and the end of the stream, are left to
py-amqp, which raises its own errors for them.

Only for plain TCP connections whose socket can be polled (zamqp's
ReadAheadTransport); TLS connections keep py-amqp's reads (the TLS layer
holds decrypted bytes a poll does not see).
"""
from __future__ import annotations

import socket
from struct import Struct
from struct import unpack_from

from amqp import spec
from amqp.channel import Channel

from zamqp.fastproperties import decode as decode_properties
from zamqp.frames import InboundMessage

__all__ = ('BufferReader', 'RECV_SIZE')

#: Bytes asked of the socket at once.
RECV_SIZE = 65536
#: Largest delivery (frames, bytes) kept in the buffer until it is whole;
#: larger ones go to the handler frame by frame as they come.
GROUP_LIMIT = 262144
#: A delivery cut short by the end of the buffer: wait for the rest.
CUT = object()

_DELIVER = spec.Basic.Deliver
_DELIVER_PREFIX = b'\x00\x3c\x00\x3c'       # class 60, method 60
_FRAME_END = 0xCE
#: A frame's type, channel and size; with a content header's class,
#: weight, body size and property flags.
_FRAME = Struct('>BHI').unpack_from
_HEADER = Struct('>BHIHHQH').unpack_from
_new = object.__new__


class BufferReader:
    """Reads and dispatches the frames waiting on ``connection`` (an open
    py-amqp connection with a ReadAheadTransport) through ``handler``
    (its installed FrameHandler), with deliveries on the fast path; see
    the module docstring. Used by the consumer thread only.

    ``fast`` counts the deliveries of the fast path, ``frames`` the
    frames handed to the handler.
    """

    def __init__(self, connection, handler, recv_size=RECV_SIZE):
        self.connection = connection
        self.transport = connection.transport
        self.handler = handler
        self.recv_size = recv_size
        self.fast = 0
        self.frames = 0
        max_size = handler.max_size
        self._max_size = (1 << 64) if max_size is None else max_size
        max_depth = handler.max_depth
        # as FrameHandler: headers this short, or with fewer F and A
        # bytes than levels, cannot nest too deep
        self._deep = (1 << 64) if max_depth is None else \
            14 + 5 * (max_depth - 1)
        self._max_depth = max_depth
        self._cut = None    # buffer length when a delivery was cut short
        self._need = 0      # ... and the length it needs (an estimate)
        self._need_at = 0   # where that delivery ends, if known

    def has_frame(self) -> bool:
        """Whether a complete frame waits in the read buffer (and not only
        the beginning of a delivery that waits for the rest)."""
        data = self.transport._read_buffer
        if len(data) < 8 or len(data) == self._cut:
            return False
        size, = unpack_from('>I', data, 3)
        return len(data) >= size + 8

    def read(self) -> bool:
        """Read what the socket holds (without waiting) and dispatch every
        complete frame; True if a frame was dispatched."""
        if not self.has_frame() and not self._receive():
            return False
        return self._dispatch()

    def _receive(self):
        """Read from the socket, without waiting, until the buffer holds
        a complete frame (or the delivery it waits for) or the socket has
        no more for now; False if it had nothing at all."""
        transport = self.transport
        recv = transport.sock.recv
        data = transport._read_buffer
        have = len(data)
        parts = [data] if data else []
        try:
            while True:
                chunk = recv(self._wanted(have), socket.MSG_DONTWAIT)
                if not chunk:   # the end: py-amqp raises for it
                    break
                parts.append(chunk)
                have += len(chunk)
                head = parts[0] if len(parts[0]) >= 7 else b''.join(parts)
                if self._complete(head, have):
                    break
        except (BlockingIOError, InterruptedError):
            if have == len(data):
                return False
        if len(parts) > 1 or parts and parts[0] is not data:
            transport._read_buffer = b''.join(parts)
        if not chunk:
            self.connection.blocking_read(1.0)
        return True

    def _complete(self, head, have):
        """Whether ``have`` bytes starting with ``head`` hold the frame
        (or the delivery waited for) at the start of the buffer."""
        if self._cut is not None and self._cut == len(
                self.transport._read_buffer):
            return have >= self._need
        if len(head) < 7:
            return False
        size, = unpack_from('>I', head, 3)
        return have >= size + 8

    def _wanted(self, have):
        """Bytes to ask the socket for, ``have`` bytes being read:
        ``recv_size``, or what the frame (or the delivery waited for) at
        the start of the buffer still misses, if more: a large body
        comes in few reads and copies."""
        data = self.transport._read_buffer
        missing = 0
        if self._cut is not None and len(data) == self._cut:
            missing = self._need - have
        elif len(data) >= 7:
            size, = unpack_from('>I', data, 3)
            missing = size + 8 - have
        return missing if missing > self.recv_size else self.recv_size

    def _dispatch(self):
        transport = self.transport
        data = transport._read_buffer
        end = len(data)
        offset = 0
        dispatched = False
        on_frame = self.handler.on_frame
        self._cut = None
        try:
            while end - offset >= 8:
                frame_type, channel, size = unpack_from('>BHI', data,
                                                        offset)
                stop = offset + 7 + size
                if stop >= end:
                    break                           # cut short
                if data[stop] != _FRAME_END:
                    break                           # py-amqp raises
                if frame_type == 1 and size >= 4 and \
                        data.startswith(_DELIVER_PREFIX, offset + 7):
                    group = self._group(data, offset, stop, end, channel)
                    if group is CUT:
                        self._cut = end - offset
                        self._need = self._need_at - offset
                        break
                    if group is not None:
                        offset = group[0]
                        dispatched = True
                        _deliver(self.handler, channel, *group[1:])
                        continue
                # py-amqp may read while it handles the frame (a
                # channel it reopens waits for Channel.OpenOk): it
                # reads on from the buffer, and what it leaves is kept
                payload = data[offset + 7:stop]
                data, offset = data[stop + 1:], 0
                transport._read_buffer = data
                self.frames += 1
                on_frame((frame_type, channel, payload))
                dispatched = True
                if transport._read_buffer is not data:  # py-amqp read
                    data = transport._read_buffer
                end = len(data)
        finally:
            if offset:
                transport._read_buffer = data[offset:]
        if offset == 0 and end >= 8 and not dispatched and \
                self._cut is None:
            size, = unpack_from('>I', data, 3)
            if end >= size + 8:     # a complete frame with a bad end
                self.connection.blocking_read(1.0)
                return True
        return dispatched

    def _group(self, data, offset, stop, end, channel):
        """The delivery group at ``offset`` (its method frame ends at
        ``stop``), if it is complete and common: (the offset after it,
        the message, channel, delivery_info and callback for _deliver);
        CUT if the buffer ends inside it (wait for more) and it is not
        larger than GROUP_LIMIT; else None (the frames go one by one to
        the handler). Nothing is changed unless it returns a group."""
        handler = self.handler
        if channel in handler.partial or \
                handler.expected.get(channel, 1) != 1:
            return None
        # the content header frame, its fields in one unpack
        head = stop + 1
        cut = CUT if end - offset < GROUP_LIMIT else None
        self._need_at = 0
        if end - head < 21:
            if end - head < 8:
                return cut
            frame_type, hchannel, hsize = unpack_from('>BHI', data, head)
            if frame_type != 2 or hchannel != channel or hsize < 14:
                return None
            return cut
        frame_type, hchannel, hsize, class_id, _weight, body_size, flags = \
            _HEADER(data, head)
        hstop = head + 7 + hsize
        if frame_type != 2 or hchannel != channel or hsize < 14:
            return None
        if hstop >= end:
            return cut
        if data[hstop] != _FRAME_END or flags & 1 or \
                body_size > self._max_size:
            return None
        if body_size > GROUP_LIMIT:
            cut = None
        chunk = self.connection.frame_max - 8
        self._need_at = hstop + 1 + body_size + 8 * -(-body_size // chunk)
        header = data[head + 7:hstop]
        if (hsize > self._deep and flags & 0x2000 and
                header.count(b'F') + header.count(b'A') >= self._max_depth):
            return None
        # the body frames
        position = hstop + 1
        frames = 0
        body = chunks = None
        received = 0
        while received < body_size:
            if end - position < 8:
                return cut
            frame_type, bchannel, bsize = _FRAME(data, position)
            bstop = position + 7 + bsize
            if frame_type != 3 or bchannel != channel:
                return None
            if bstop >= end:
                return cut
            if data[bstop] != _FRAME_END:
                return None
            piece = data[position + 7:bstop]
            if body is None:
                body = piece
            else:
                if chunks is None:
                    chunks = [body]
                chunks.append(piece)
            frames += 1
            received += bsize
            position = bstop + 1
        if received != body_size:
            return None
        target = self._target(channel)
        if target is None:
            return None
        args = data[offset + 7:stop]
        info = _deliver_info(args)
        if info is None:
            return None
        channel_obj, callbacks = target
        callback = callbacks.get(info['consumer_tag'])
        if callback is None:
            return None         # py-amqp rejects it, and logs
        properties = decode_properties(header) if class_id == 60 else None
        if properties is None:
            probe = InboundMessage()
            try:
                probe._load_properties(class_id, header, 12)
            except Exception:   # noqa: BLE001 - the handler's fault path
                return None     # (it decodes again and keeps the fault)
            properties = probe.properties
        # the message as py-amqp's Message() and frame handler leave it
        msg = _new(InboundMessage)
        msg.frame_method = _DELIVER
        msg.frame_args = args
        msg.properties = properties
        msg._pending_chunks = []
        msg.body_size = body_size
        msg.body_received = received
        msg.body = '' if body is None else \
            body if chunks is None else b''.join(chunks)
        msg.ready = True
        msg.delivery_info = None
        msg.channel = None
        msg.zamqp_header = header
        self.connection.bytes_recv += 2 + frames
        handler.expected[channel] = 1
        self.fast += 1
        return position, msg, channel_obj, info, callback

    def _target(self, channel):
        """(channel, its callbacks) if a delivery on ``channel`` would
        reach ``_on_basic_deliver`` and a consumer callback as in
        py-amqp's plain case, else None."""
        channels = self.connection.channels
        if not channels:
            return None
        channel_obj = channels.get(channel)
        if channel_obj is None or channel_obj.is_closing or \
                _DELIVER in channel_obj._pending:
            return None
        methods = channel_obj._METHODS
        if methods is not _PLAIN_METHODS and getattr(
                methods.get(_DELIVER), 'args', None) != 'sLbss':
            return None
        listener = channel_obj._callbacks.get(_DELIVER)
        if listener is None or \
                getattr(listener, '__func__', None) is not _ON_DELIVER or \
                listener.__self__ is not channel_obj:
            return None
        return channel_obj, channel_obj.callbacks


def _deliver_info(args):
    """Basic.Deliver's arguments (``sLbss`` from offset 4) as py-amqp's
    ``loads`` decodes them, as its ``delivery_info``; None unless they
    fill the payload exactly and are UTF-8 (the handler's path decides
    then: it sanitizes, or py-amqp raises)."""
    size = len(args)
    offset = 5 + args[4]
    if offset + 10 > size:
        return None
    consumer_tag = args[5:offset]
    delivery_tag, = unpack_from('>Q', args, offset)
    redelivered = (args[offset + 8] & 1) == 1
    offset += 9
    start = offset + 1
    offset = start + args[offset]
    if offset >= size:
        return None
    exchange = args[start:offset]
    start = offset + 1
    offset = start + args[offset]
    if offset != size:
        return None
    try:
        return {
            'consumer_tag': consumer_tag.decode('utf-8', 'surrogatepass'),
            'delivery_tag': delivery_tag,
            'redelivered': redelivered,
            'exchange': exchange.decode('utf-8', 'surrogatepass'),
            'routing_key': args[start:offset].decode('utf-8',
                                                     'surrogatepass'),
        }
    except UnicodeDecodeError:
        return None


def _deliver(handler, channel, msg, channel_obj, info, callback):
    """What py-amqp's dispatch_method and _on_basic_deliver do for a
    plain delivery, with the handler naming it as current meanwhile."""
    if channel_obj.auto_decode and 'content_encoding' in msg.properties:
        try:
            msg.body = msg.body.decode(msg.properties['content_encoding'])
        except Exception:       # noqa: BLE001 - as py-amqp: keep bytes
            pass
    msg.channel = channel_obj
    msg.delivery_info = info
    handler.set_dispatching(channel, msg)
    callback(msg)
    handler.set_dispatching(channel, None)


_ON_DELIVER = Channel._on_basic_deliver
_PLAIN_METHODS = Channel._METHODS
