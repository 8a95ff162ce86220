"""py-amqp connection classes tuned for publishing and for consuming.

The framing stays py-amqp's; these classes change only how often the
socket is asked for data.
"""
import select
import socket

import amqp
from amqp.transport import TCPTransport

#: Bytes a consuming connection asks the socket for at once. Larger reads
#: lose the gain again to copying in py-amqp's read buffer.
READ_AHEAD = 4096


class PublisherConnection(amqp.Connection):
    """A connection that does not negotiate ``connection.blocked``.

    With that capability on, py-amqp's basic_publish first drains the
    socket with a zero timeout (three system calls and two exceptions,
    about a third of a publish's CPU time) to pass connection.blocked
    notifications to an ``on_blocked`` handler. Publishers call
    ``Readiness.poll`` instead, which reads only when the broker sent
    something, so a channel or connection the broker closed still raises
    before the next message goes out.
    """

    negotiate_capabilities = dict(amqp.Connection.negotiate_capabilities,
                                  **{'connection.blocked': False})


class Readiness:
    """Lets py-amqp handle frames the broker sent, without waiting."""

    def __init__(self, connection):
        self.connection = connection
        self._poller = select.poll()
        self._poller.register(connection.sock, select.POLLIN)

    def poll(self):
        if self._poller.poll(0) and self.connection.connected:
            try:
                self.connection.drain_events(timeout=0)
            except socket.timeout:
                pass


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


class ConsumerConnection(amqp.Connection):
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
    return amqp.Connection
