"""Differential tests of zamqp.fastconsume against py-amqp (issue 13).

The same byte stream goes, over a real TCP connection on loopback, to
two py-amqp connections with zamqp's FrameHandler installed: one read
by py-amqp's ``drain_events`` (the reference), one by
``BufferReader.read`` (receive sizes drawn at random, so frames and
deliveries are cut at every place). Both must hand the same messages to
the consumer callbacks (body, every property, delivery_info, channel,
zamqp_fault, raw header, frame fields), raise the same exceptions in the
same order, write the same frames back (py-amqp rejects deliveries for
unknown consumer tags) and leave the same handler state. The streams mix
well-formed deliveries on three channels with the hostile corpus, frames
of other methods, a Channel.Close, bad frame ends, deliveries for
unknown consumer tags and channels in other states (closing, with a
one-shot waiter, auto_decode off). No broker.
"""
import os
import select
import socket
import struct
import tempfile
import threading

import amqp
import pytest
from amqp.method_framing import frame_writer
from hypothesis import HealthCheck
from hypothesis import configuration as hypothesis_configuration
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from zamqp import frames
from zamqp.fastconsume import GROUP_LIMIT
from zamqp.fastconsume import BufferReader
from zamqp.tests import hostileframes as hf
from zamqp.tests.test_frames import _message
from zamqp.transport import ConsumerConnection
from zamqp.transport import ReadAheadTransport

if not os.environ.get('HYPOTHESIS_STORAGE_DIRECTORY'):
    hypothesis_configuration.set_hypothesis_home_dir(
        os.path.join(tempfile.gettempdir(), 'zamqp-hypothesis'))
CI = bool(os.environ.get('CI'))
HEALTH = [HealthCheck.too_slow, HealthCheck.data_too_large,
          HealthCheck.large_base_example, HealthCheck.filter_too_much]
DELIVER = (60, 60)
#: Exceptions one run records before it gives up (each is one error a
#: consumer would see; the test reads on to check what is left).
MAX_ERRORS = 20


def tcp_pair():
    listener = socket.socket()
    listener.bind(('127.0.0.1', 0))
    listener.listen(1)
    ours = socket.create_connection(listener.getsockname())
    theirs, _ = listener.accept()
    listener.close()
    return ours, theirs


class Peer:
    """A py-amqp connection on one end of a TCP pair, channels 1-4 set up
    as ``states`` says, FrameHandler installed; the other end sends."""

    def __init__(self, states, max_size):
        self.sock, self.broker = tcp_pair()
        conn = ConsumerConnection(host='127.0.0.1:1')
        transport = ReadAheadTransport('127.0.0.1:1', connect_timeout=1)
        transport.sock = self.sock
        transport._setup_transport()
        transport.connected = True
        conn._transport = transport
        conn.frame_writer = frame_writer(conn, transport)
        self.conn = conn
        self.calls = []
        for channel_id, state in enumerate(states, 1):
            channel = amqp.Channel(conn, channel_id,
                                   auto_decode=state != 'no-decode')
            if state != 'no-callback':
                channel.callbacks['ctag'] = self.record
            if state == 'closing':
                channel.is_closing = True
            if state == 'waiter':
                channel._pending[DELIVER] = self.waiter
        self.handler = frames.install(conn, max_size)

    def record(self, msg):
        self.calls.append(('callback', summary(msg)))

    def waiter(self, method_sig, *args):
        self.calls.append(('waiter', method_sig, summary(args[-1])))

    def send(self, data):
        def send():
            self.broker.sendall(data)
            self.broker.shutdown(socket.SHUT_WR)
        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        return sender

    def written_back(self):
        """What our side wrote (everything: it is shut down first)."""
        self.sock.shutdown(socket.SHUT_WR)
        self.broker.settimeout(5)
        data = b''
        while (chunk := self.broker.recv(65536)):
            data += chunk
        return data

    def state(self):
        handler = self.handler
        return (dict(handler.expected), sorted(handler.partial),
                handler.faults, handler.discarded, handler.current is None,
                self.conn.bytes_recv)

    def close(self):
        self.sock.close()
        self.broker.close()


def summary(msg):
    if msg is None:
        return None
    # properties as repr: NaN is not equal to itself
    return (msg.frame_method, bytes(msg.frame_args), msg.body,
            repr(msg.properties), msg.body_size, msg.body_received, msg.ready,
            list(msg._pending_chunks), msg.delivery_info,
            getattr(msg.channel, 'channel_id', None), msg.zamqp_fault,
            msg.zamqp_header, type(msg).__name__)


def run(data, states, max_size, recv_sizes=None):
    """Feed ``data``: through py-amqp's drain_events (``recv_sizes``
    None) or BufferReader; (calls, errors, written back, state)."""
    peer = Peer(states, max_size)
    sender = peer.send(data)
    errors = []
    reader = None
    if recv_sizes is not None:
        reader = BufferReader(peer.conn, peer.handler)
        sizes = iter(recv_sizes)
    try:
        while len(errors) < MAX_ERRORS:
            try:
                if reader is None:
                    peer.conn.drain_events(timeout=5)
                    continue
                reader.recv_size = next(sizes, 65536)
                if not reader.has_frame():
                    assert select.select([peer.sock], [], [], 5)[0], \
                        'nothing to read for 5 s'
                reader.read()
            except OSError as exc:      # the end of the stream
                errors.append(('end', str(exc)))
                break
            except AssertionError:
                raise
            except Exception as exc:    # noqa: BLE001 - compared below
                errors.append((type(exc), str(exc)))
        sender.join(5)
        return peer.calls, errors, peer.written_back(), peer.state(), \
            (reader.fast if reader is not None else None)
    finally:
        peer.close()


def check(stream, states=('plain',) * 4, max_size=None, recv_sizes=(65536,)):
    data = b''.join(hf.frame(*f) for f in stream)
    expected = run(data, states, max_size)
    got = run(data, states, max_size, recv_sizes)
    assert got[:4] == expected[:4]
    return got


# -- streams ------------------------------------------------------------------

@st.composite
def corpus_delivery(draw, channel):
    case = draw(st.sampled_from(hf.CASES))
    if len(case.body) > 200000:
        case = case._replace(body=case.body[:150000])
    return hf.delivery(channel, draw(st.integers(1, 2 ** 64 - 1)),
                       case.properties, case.body,
                       routing_key=case.routing_key,
                       consumer_tag=draw(st.sampled_from(
                           (b'ctag', b'ctag', b'ctag', b'other'))),
                       redelivered=draw(st.booleans()))


@st.composite
def encoded_delivery(draw, channel):
    """A delivery with a content encoding py-amqp may decode the body
    with (auto_decode), and a body that may not decode."""
    encoding = draw(st.sampled_from((b'utf-8', b'latin-1', b'nonesuch',
                                     b'ascii')))
    body = draw(st.sampled_from((b'plain', 'caf\xe9'.encode(), b'\xff\xfe',
                                 b'')))
    return hf.delivery(channel, draw(st.integers(1, 1000)),
                       hf.properties(content_encoding=encoding), body)


OTHER_FRAMES = st.sampled_from([
    (8, 0, b''),                                            # heartbeat
    (1, 1, struct.pack('>HHQB', 60, 80, 7, 0)),             # Basic.Ack
    (1, 2, struct.pack('>HH', 20, 40) + struct.pack('>H', 404)
     + hf.shortstr(b'NOT_FOUND') + struct.pack('>HH', 60, 20)),  # Close
    (1, 1, struct.pack('>HH', 60, 30) + hf.shortstr(b'ctag') + b'\x00'),
    (4, 1, b'bad type'),
    (1, 3, b'\x00'),                                        # too short
])


@st.composite
def streams(draw):
    """Deliveries (random, corpus, encoded) and other frames on four
    channels, interleaved frame by frame, at times a bad frame end."""
    queues = []
    for channel in range(1, 5):
        parts = draw(st.lists(st.one_of(
            _message(channel, channel * 1000), corpus_delivery(channel),
            encoded_delivery(channel), OTHER_FRAMES.map(lambda f: [f])),
            max_size=3))
        queues.append([f for p in parts for f in p])
    stream = []
    while any(queues):
        live = [q for q in queues if q]
        queue = draw(st.sampled_from(live))
        take = draw(st.integers(1, 4))      # often whole groups in a row
        stream += queue[:take]
        del queue[:take]
    return stream


STATES = st.lists(st.sampled_from(('plain', 'plain', 'no-decode',
                                   'closing', 'waiter', 'no-callback')),
                  min_size=4, max_size=4)
RECV_SIZES = st.lists(st.one_of(st.integers(1, 40), st.integers(41, 9000),
                                st.just(65536)), min_size=1, max_size=30)


@settings(max_examples=150 if CI else 200, deadline=None, derandomize=CI,
          database=None, suppress_health_check=HEALTH)
@given(stream=streams(), states=STATES, recv_sizes=RECV_SIZES,
       max_size=st.sampled_from((None, None, 0, 100, 5000)))
def test_same_as_py_amqp(stream, states, recv_sizes, max_size):
    check(stream, states, max_size, recv_sizes)


@settings(max_examples=60 if CI else 100, deadline=None, derandomize=CI,
          database=None, suppress_health_check=HEALTH)
@given(stream=streams(), cut=st.integers(0, 10 ** 6),
       flip=st.integers(0, 10 ** 6), byte=st.integers(0, 255))
def test_damaged_streams_as_py_amqp(stream, cut, flip, byte):
    """A byte changed anywhere, and the stream cut anywhere: the same
    messages before the damage, the same errors after it."""
    data = bytearray(b''.join(hf.frame(*f) for f in stream))
    if data:
        data[flip % len(data)] = byte
        data = data[:len(data) - cut % len(data)]
    data = bytes(data)
    states = ('plain',) * 4
    expected = run(data, states, None)
    got = run(data, states, None, [7, 300, 65536])
    assert got[:4] == expected[:4]


# -- the common case takes the fast path --------------------------------------

def plain_deliveries(n, body=b'x' * 200, channel=1):
    props = hf.properties(content_type=b'application/x-python-serialize',
                          delivery_mode=2, message_id=b'abc-1')
    return [f for tag in range(1, n + 1)
            for f in hf.delivery(channel, tag, props, body)]


def test_plain_deliveries_are_fast():
    got = check(plain_deliveries(500))
    calls, errors, fast = got[0], got[1], got[4]
    assert len(calls) == 500 and errors == [('end', errors[0][1])]
    assert fast == 500


@pytest.mark.parametrize('size', [0, 1, 131064, 131065, 400000])
def test_bodies_across_frames(size):
    """Bodies of no frame, one, a full one and several: the same
    messages; deliveries up to GROUP_LIMIT take the fast path."""
    got = check(plain_deliveries(3, body=b'b' * size),
                recv_sizes=[1 << 20] * 50)
    assert [c[1][2] for c in got[0]] == [b'b' * size or ''] * 3
    if size <= GROUP_LIMIT:     # larger: fast only when read whole
        assert got[4] == 3


def test_small_reads_wait_for_whole_deliveries():
    """Reads of 100 bytes never hold a whole delivery: the reader keeps
    the beginning until the rest came, and the messages are the same."""
    got = check(plain_deliveries(20), recv_sizes=[100] * 2000)
    assert len(got[0]) == 20 and got[4] == 20


def test_large_deliveries_cut_go_to_the_handler():
    """A delivery larger than GROUP_LIMIT, read 64 KiB at a time, is not
    kept whole in the buffer: its frames go to the handler as they
    come, and the messages are the same."""
    got = check(plain_deliveries(2, body=b'L' * (GROUP_LIMIT + 1)),
                recv_sizes=[65536] * 100)
    assert [len(c[1][2]) for c in got[0]] == [GROUP_LIMIT + 1] * 2
    assert got[4] == 0


@pytest.mark.parametrize('case', hf.CASES, ids=lambda c: c.name)
def test_hostile_corpus(case):
    """Every case of the hostile corpus, alone and between good
    deliveries: the same fault (or message) as through py-amqp."""
    good = plain_deliveries(2)
    stream = good + hf.delivery(1, 9, case.properties, case.body,
                                routing_key=case.routing_key) + good
    got = check(stream, max_size=500000, recv_sizes=[1 << 21] * 20)
    faults = [c[1][10] for c in got[0]]
    assert len(faults) == 5 and faults[:2] == faults[3:] == [None] * 2
    assert (faults[2] is not None) == (case.fault or len(case.body) > 500000)


def test_oversized_body_is_dropped_as_by_the_handler():
    got = check(plain_deliveries(3, body=b'z' * 6000), max_size=5000)
    assert [c[1][2] for c in got[0]] == [b''] * 3
    assert all('max_size' in c[1][10] for c in got[0])


def test_unknown_consumer_tag_is_rejected_as_by_py_amqp():
    stream = hf.delivery(1, 5, hf.properties(), b'x',
                         consumer_tag=b'nobody') + plain_deliveries(1)
    got = check(stream)
    assert len(got[0]) == 1
    assert got[2]               # the basic.reject py-amqp wrote


def test_buffer_kept_for_py_amqp_after_an_error():
    """A Channel.Close between deliveries raises in the middle of a
    buffer: what follows it is still read, once."""
    cancel = (1, 1, struct.pack('>HH', 60, 30) + hf.shortstr(b'ctag')
              + b'\x00')
    got = check(plain_deliveries(3) + [cancel]
                + plain_deliveries(3, channel=2))
    assert len(got[0]) == 6
    assert got[1][0][0] is amqp.exceptions.ConsumerCancelled
    assert got[4] == 6
