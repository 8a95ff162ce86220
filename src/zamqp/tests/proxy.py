"""A TCP proxy for fault tests: forward, cut, stall, slow down, resume.

One daemon thread runs a selector loop over the listening socket and
every client/upstream pair (non-blocking, with a bounded buffer per
direction, so a peer that does not read never blocks the others).
``cut()`` closes every connection (new ones are still accepted);
``stall()`` stops forwarding in both directions but keeps the sockets
open, as a dead peer or a silent network would; ``slow(delay, chunk)``
forwards at most ``chunk`` bytes at a time, each after ``delay``
seconds; ``resume()`` forwards normally again. The loop ends after
``lifetime`` seconds at the latest, or on ``close()``.
"""
import selectors
import socket
import threading
import time

FORWARD, STALL, SLOW = 'forward', 'stall', 'slow'
BUFFER = 1 << 20        # bytes held for a slow reader before reading stops


class Proxy:

    def __init__(self, target_port, target_host='127.0.0.1', lifetime=300.0):
        self.target = (target_host, target_port)
        self.lifetime = lifetime
        self.mode = FORWARD
        self.delay, self.chunk = 0.0, 65536
        self.accepted = 0
        self._pairs = {}            # socket -> its peer
        self._out = {}              # socket -> bytes waiting to be sent
        self._eof = set()           # sockets to close once flushed
        self._cut = threading.Event()
        self._closing = threading.Event()
        self._listener = socket.create_server(('127.0.0.1', 0))
        self._listener.setblocking(False)
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(
            target=self._run, name='zamqp-test-proxy', daemon=True)

    @property
    def address(self):
        return f'127.0.0.1:{self.port}'

    def start(self):
        self._thread.start()
        return self

    # what the tests call

    def cut(self):
        """Close every open connection (clients see the peer go away)."""
        self._cut.set()
        while self._cut.is_set() and self._thread.is_alive():
            time.sleep(0.01)

    def stall(self):
        self.mode = STALL

    def slow(self, delay=0.01, chunk=512):
        self.delay, self.chunk = delay, chunk
        self.mode = SLOW

    def resume(self):
        self.mode = FORWARD

    @property
    def connections(self):
        return len(self._pairs) // 2

    def close(self):
        self._closing.set()
        self._thread.join(5)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.close()

    # the loop

    def _run(self):
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ)
        deadline = time.monotonic() + self.lifetime
        try:
            while not self._closing.is_set() and time.monotonic() < deadline:
                if self._cut.is_set():
                    self._close_all()
                    self._cut.clear()
                self._watch()
                for key, events in self._selector.select(timeout=0.05):
                    self._ready(key.fileobj, events)
                if self.mode == STALL:
                    time.sleep(0.01)
        finally:
            self._close_all()
            self._selector.close()
            self._listener.close()

    def _ready(self, sock, events):
        if sock is self._listener:
            return self._accept()
        if self.mode == STALL or sock not in self._pairs:
            return
        if events & selectors.EVENT_WRITE:
            self._flush(sock)
        if events & selectors.EVENT_READ and sock in self._pairs:
            self._read(sock)

    def _read(self, sock):
        peer = self._pairs[sock]
        if len(self._out[peer]) >= BUFFER:
            return                  # the peer is slow: wait for it
        size = self.chunk if self.mode == SLOW else 65536
        try:
            data = sock.recv(size)
        except BlockingIOError:
            return
        except OSError:
            data = b''
        if not data:
            self._eof.add(peer)     # close once what is left is written
        else:
            if self.mode == SLOW:
                time.sleep(self.delay)
            self._out[peer] += data
        self._flush(peer)

    def _flush(self, sock):
        out = self._out.get(sock)
        if out is None:
            return
        try:
            if out:
                del out[:sock.send(out)]
        except BlockingIOError:
            pass
        except OSError:
            return self._close_pair(sock)
        if not out and sock in self._eof:
            self._close_pair(sock)

    def _watch(self):
        """Select for writing only the sockets with bytes waiting."""
        for sock in list(self._pairs):
            events = selectors.EVENT_READ
            if self._out[sock]:
                events |= selectors.EVENT_WRITE
            if self._selector.get_key(sock).events != events:
                self._selector.modify(sock, events)

    def _accept(self):
        try:
            client, _ = self._listener.accept()
        except BlockingIOError:
            return
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            client.close()
            return
        self.accepted += 1
        for sock, peer in ((client, upstream), (upstream, client)):
            sock.setblocking(False)
            self._pairs[sock] = peer
            self._out[sock] = bytearray()
            self._selector.register(sock, selectors.EVENT_READ)

    def _close_pair(self, sock):
        peer = self._pairs.pop(sock, None)
        self._pairs.pop(peer, None)
        for s in (sock, peer):
            if s is None:
                continue
            self._out.pop(s, None)
            self._eof.discard(s)
            try:
                self._selector.unregister(s)
            except (KeyError, ValueError):
                pass
            s.close()

    def _close_all(self):
        for sock in list(self._pairs):
            self._close_pair(sock)
