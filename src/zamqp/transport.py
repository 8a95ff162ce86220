"""py-amqp connection classes tuned for publishing and for consuming.

The framing stays py-amqp's; these classes change only how often the
socket is asked for data.
"""
import select
import socket
import struct

import amqp
from amqp import spec
from amqp.transport import TCPTransport

#: Bytes a consuming connection asks the socket for at once. Larger reads
#: lose the gain again to copying in py-amqp's read buffer.
READ_AHEAD = 4096


class ClosingConnection(amqp.Connection):
    """A connection that keeps the broker's reason when it closes it.

    On ``connection.close`` py-amqp first answers ``close-ok``, then
    raises the error that carries the broker's reply code and text. On
    ``rabbitmqctl stop`` RabbitMQ 3.10 resets the TCP connection right
    after its ``connection.close`` (CONNECTION_FORCED, "broker forced
    connection closure with reason 'shutdown'"), so that write failed
    and its ``ConnectionResetError`` hid the reason. Here a failed
    ``close-ok`` is ignored (the socket is gone anyway) and the broker's
    error is raised.
    """

    def _on_close(self, reply_code, reply_text, class_id, method_id):
        try:
            self._x_close_ok()
        except OSError:
            pass
        raise amqp.exceptions.error_for_code(
            reply_code, reply_text, (class_id, method_id),
            amqp.exceptions.ConnectionError)


class BlockAwareConnection(ClosingConnection):
    """A connection that keeps RabbitMQ's reason for blocking it.

    RabbitMQ sends ``connection.blocked`` with a reason (``'low on
    memory'``, ``'low on disk'``) to connections that negotiated the
    capability; py-amqp's method table parses it without arguments and
    passes a fixed text on. Here the reason is parsed: ``blocked`` holds
    it while the broker blocks publishing (None otherwise), and
    ``on_blocked(reason)`` / ``on_unblocked()`` are called as usual.
    """

    _METHODS = dict(amqp.Connection._METHODS)
    _METHODS[spec.Connection.Blocked] = spec.method(
        spec.Connection.Blocked, 's')

    blocked = None

    def _on_blocked(self, reason=''):
        self.blocked = reason or 'no reason given'
        if self.on_blocked:
            return self.on_blocked(self.blocked)

    def _on_unblocked(self):
        self.blocked = None
        if self.on_unblocked:
            return self.on_unblocked()


class PublisherConnection(BlockAwareConnection):
    """A connection that negotiates ``connection.blocked`` but keeps
    py-amqp's basic_publish from draining the socket for it.

    py-amqp's basic_publish looks at the ``capabilities`` of
    ``client_properties`` and, when ``connection.blocked`` is on there,
    first drains the socket with a zero timeout (three system calls and
    two exceptions, about a third of a publish's CPU time). The broker
    only needs the capability in the ``connection.start-ok`` it got
    during the handshake: afterwards the connection keeps a copy without
    it. Publishers call ``Readiness.poll`` instead, which reads only when
    the broker sent something, so ``connection.blocked`` and a channel
    or connection the broker closed are still seen before the next
    message goes out.
    """

    #: What the broker was told (``client_properties`` hides it later).
    sent_capabilities = None

    def _on_start(self, *args, **kwargs):
        result = super()._on_start(*args, **kwargs)
        sent = self.client_properties.get('capabilities', {})
        self.sent_capabilities = dict(sent)
        self.client_properties = dict(self.client_properties, capabilities={
            name: value for name, value in sent.items()
            if name != 'connection.blocked'})
        return result


#: A basic.ack frame: type 1, channel, size 13, class 60, method 80,
#: delivery tag, multiple, frame end (21 bytes).
_ACK = struct.Struct('>BHIHHQBB')
_ACK_FIELDS = (1, 13, 60, 80, 0xCE)


class Readiness:
    """Lets py-amqp handle frames the broker sent, without waiting.

    ``on_ack = (channel_id, callback)`` adds a fast path for publisher
    confirms: when the socket has data and py-amqp's read buffer is
    empty, one ``recv`` takes what is there and leading ``basic.ack``
    frames of that channel (fixed 21 bytes) go straight to
    ``callback(delivery_tag, multiple)``; whatever follows (any other
    frame, a partial one) is handed to py-amqp's read buffer and parsed
    by py-amqp. A confirming producer gets about one ack per message
    when the broker keeps up, so this saves most of py-amqp's per-frame
    cost (three ``recv`` calls and the method dispatch).
    """

    on_ack = None

    def __init__(self, connection):
        self.connection = connection
        self._poller = select.poll()
        self._poller.register(connection.sock, select.POLLIN)

    def poll(self):
        if not (self._poller.poll(0) and self.connection.connected):
            return
        transport = self.connection.transport
        if self.on_ack is not None and not transport._read_buffer:
            if self._acks(transport):
                return
        self._drain(transport)

    def _acks(self, transport):
        """Handle leading acks; True if nothing is left for py-amqp."""
        try:
            data = transport.sock.recv(65536, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return True
        if not data:
            return False        # py-amqp raises for the closed socket
        channel_id, callback = self.on_ack
        offset, size, unpack = 0, len(data), _ACK.unpack_from
        while size - offset >= 21:
            kind, channel, length, cls, method, tag, multiple, end = \
                unpack(data, offset)
            if (kind, length, cls, method, end) != _ACK_FIELDS or \
                    channel != channel_id:
                break
            offset += 21
            callback(tag, multiple)
        if offset == size:
            return True
        transport._read_buffer = data[offset:]
        return False

    def _drain(self, transport):
        """py-amqp parses what it has; stops when only a partial frame
        (or nothing) is left, the rest arriving wakes the poll."""
        while True:
            try:
                self.connection.drain_events(timeout=0)
            except socket.timeout:
                return
            if not transport._read_buffer or not self.connection.connected:
                return


class ReadAheadTransport(TCPTransport):
    """py-amqp's TCP transport, reading ahead instead of byte-exact.

    py-amqp asks ``recv`` for exactly the bytes of the frame part it
    parses next: nine system calls per message (three with a poll each
    under a timeout). Here ``recv`` may return up to READ_AHEAD bytes;
    py-amqp's ``_read`` keeps the rest in its read buffer for the next
    frames. If py-amqp no longer reads through ``_quick_recv``, this
    silently becomes the plain transport (``reads_ahead`` tells).
    """

    reads_ahead = False

    def _setup_transport(self):
        super()._setup_transport()
        if getattr(self, '_quick_recv', None) is None:
            return
        recv = self.sock.recv

        def read_ahead(n, size=READ_AHEAD):
            return recv(n if n > size else size)

        self._quick_recv = read_ahead
        self.reads_ahead = True


class ConsumerConnection(ClosingConnection):
    """A connection whose plain TCP transport reads ahead.

    Not for connections whose socket is polled for readiness: a poll
    cannot see frames already waiting in the read buffer. TLS
    connections keep py-amqp's transport (TLS buffers records already).
    """

    def Transport(self, host, connect_timeout, ssl=False,
                  read_timeout=None, write_timeout=None, **kwargs):
        if ssl:
            return super().Transport(host, connect_timeout, ssl,
                                     read_timeout, write_timeout, **kwargs)
        return ReadAheadTransport(
            host, connect_timeout=connect_timeout, read_timeout=read_timeout,
            write_timeout=write_timeout, **kwargs)


def connection_class(mode, publisher, ssl):
    """The py-amqp connection class for an AMQPConnection."""
    if mode == 'r':
        return ConsumerConnection
    if publisher and not ssl and hasattr(select, 'poll'):
        return PublisherConnection
    if publisher:
        return BlockAwareConnection     # py-amqp drains before publishing
    return ClosingConnection


def set_write_timeout(sock, seconds):
    """Let a write on ``sock`` fail after about ``seconds`` seconds.

    ``SO_SNDTIMEO`` bounds each blocked ``send``; ``TCP_USER_TIMEOUT``
    (Linux) is how long sent data may stay unacknowledged (including a
    peer that keeps its window at zero) before the kernel drops the
    connection. py-amqp sets the latter to 1 s, which drops a connection
    as soon as a broker stops reading for a second (as RabbitMQ does
    while it blocks publishers); here both follow ``seconds``.
    """
    sec = int(seconds)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO,
                    struct.pack('ll', sec, int((seconds - sec) * 1e6)))
    option = getattr(socket, 'TCP_USER_TIMEOUT', None)
    if option is not None:
        sock.setsockopt(socket.IPPROTO_TCP, option,
                        max(1, int(seconds * 1000)))
