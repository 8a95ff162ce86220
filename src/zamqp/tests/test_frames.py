"""zamqp.frames without a broker: frames fed straight to the handler.

The oracle for well-formed frames is py-amqp's own frame_handler: the
same random frame streams go to both, and the callbacks must see the
same calls. For the hostile corpus (zamqp.tests.hostileframes), py-amqp
raises and zamqp's handler passes the message on with a fault.
"""
import os
import struct
import tempfile

import amqp
import pytest
from amqp.exceptions import FrameSyntaxError
from amqp.exceptions import UnexpectedFrame
from amqp.method_framing import frame_handler
from amqp.serialization import loads
from hypothesis import HealthCheck
from hypothesis import configuration as hypothesis_configuration
from hypothesis import example
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from zamqp import frames
from zamqp.tests import hostileframes as hf

if not os.environ.get('HYPOTHESIS_STORAGE_DIRECTORY'):
    hypothesis_configuration.set_hypothesis_home_dir(
        os.path.join(tempfile.gettempdir(), 'zamqp-hypothesis'))

CI = bool(os.environ.get('CI'))
DELIVER, GET_OK, RETURN, ACK = (60, 60), (60, 71), (60, 50), (60, 80)


class FakeConnection:
    bytes_recv = 0


def summary(msg):
    if msg is None:
        return None
    return (msg.frame_method, bytes(msg.frame_args), msg.body,
            msg.properties, msg.body_size, msg.body_received, msg.ready)


class Recorder:
    """A callback that records what it is called with."""

    def __init__(self):
        self.calls = []

    def __call__(self, channel, method_sig, args, msg):
        self.calls.append((channel, method_sig, bytes(args), summary(msg)))
        self.last = msg


def feed(handler, stream):
    """What ``handler`` returns for each frame, or the exception. A frame
    too short for its fields raises struct.error in py-amqp and
    FrameSyntaxError (an AMQPError, a lost connection to a consumer) in
    zamqp's handler: both count as 'too short'."""
    returned = []
    for frame in stream:
        try:
            returned.append(handler(frame))
        except (struct.error, FrameSyntaxError):
            returned.append('too short')
            break
        except Exception as exc:
            returned.append((type(exc), str(exc)))
            break
    return returned


def both(stream, **kw):
    """Feed ``stream`` to py-amqp's handler and to zamqp's."""
    theirs, ours = Recorder(), Recorder()
    conn_a, conn_b = FakeConnection(), FakeConnection()
    handler = frames.FrameHandler(conn_b, ours, **kw)
    result_a = feed(frame_handler(conn_a, theirs), stream)
    result_b = feed(handler.on_frame, stream)
    assert (result_b, ours.calls, conn_b.bytes_recv) == \
        (result_a, theirs.calls, conn_a.bytes_recv)
    return handler, ours


# random well-formed frames

def _utf8(max_size):
    return st.text(max_size=max_size).map(str.encode).filter(
        lambda raw: len(raw) <= max_size)


_scalars = st.one_of(
    st.integers(0, 1).map(lambda v: hf.field('t', v)),
    st.integers(-128, 127).map(lambda v: hf.field('b', v)),
    st.integers(0, 255).map(lambda v: hf.field('B', v)),
    (_utf8(20).map(lambda v: hf.field('s', hf.shortstr(v)))
     if hf.OLD_PY_AMQP else
     st.integers(-2 ** 15, 2 ** 15 - 1).map(lambda v: hf.field('s', v))),
    st.integers(-2 ** 15, 2 ** 15 - 1).map(lambda v: hf.field('U', v)),
    st.integers(0, 2 ** 16 - 1).map(lambda v: hf.field('u', v)),
    st.integers(-2 ** 31, 2 ** 31 - 1).map(lambda v: hf.field('I', v)),
    st.integers(0, 2 ** 32 - 1).map(lambda v: hf.field('i', v)),
    st.integers(-2 ** 63, 2 ** 63 - 1).map(lambda v: hf.field('L', v)),
    st.integers(-2 ** 63, 2 ** 63 - 1).map(lambda v: hf.field('l', v)),
    st.floats(width=32, allow_nan=False).map(lambda v: hf.field('f', v)),
    st.floats(allow_nan=False).map(lambda v: hf.field('d', v)),
    st.tuples(st.integers(0, 255), st.integers(-2 ** 31, 2 ** 31 - 1)).map(
        lambda sv: hf.decimal(*sv)),
    st.binary(max_size=40).map(lambda v: hf.field('S', hf.longstr(v))),
    st.binary(max_size=40).map(lambda v: hf.field('x', hf.longstr(v))),
    st.integers(0, 253402300799).map(lambda v: hf.field('T', v)),
    st.just(hf.field('V')),
)
# py-amqp before 5.4 raises for a table key that is not UTF-8
_keys = _utf8(20) if hf.OLD_PY_AMQP else st.binary(max_size=20)
_fields = st.recursive(_scalars, lambda inner: st.one_of(
    st.lists(st.tuples(_keys, inner), max_size=4).map(
        lambda items: hf.field('F', hf.table(*items))),
    st.lists(inner, max_size=4).map(
        lambda values: hf.field('A', hf.array(*values)))), max_leaves=12)

_property_values = {
    's': _utf8(255), 'o': st.integers(0, 255),
    'T': st.integers(0, 2 ** 64 - 1),
    'F': st.lists(st.tuples(_keys, _fields), max_size=5).map(
        lambda items: hf.table(*items)),
}
_properties = st.fixed_dictionaries({}, optional={
    name: _property_values[ptype] for name, _, ptype in hf.PROPERTIES
}).map(lambda values: hf.properties(**values))


@st.composite
def _message(draw, channel, tag):
    """The frames of one content method (or a plain method) on
    ``channel``, the body split at random sizes around frame sizes."""
    kind = draw(st.sampled_from(('deliver', 'deliver', 'get', 'return',
                                 'ack')))
    if kind == 'ack':
        return [(1, channel, struct.pack('>HHQB', 60, 80, tag, 0))]
    if kind == 'deliver':
        args = struct.pack('>HH', *DELIVER) + hf.deliver_args(
            tag, exchange=draw(_utf8(30)), routing_key=draw(_utf8(60)))
    elif kind == 'get':
        args = struct.pack('>HH', *GET_OK) + hf.get_ok_args(tag)
    else:
        args = struct.pack('>HH', *RETURN) + hf.return_args()
    size = draw(st.sampled_from((0, 1, 4095, 4096, 4097, 8191, 8192,
                                 8193)) | st.integers(0, 20000))
    body = draw(st.binary(min_size=min(size, 64), max_size=64)) * (
        size // 64 + 1)
    body = body[:size]
    chunk = draw(st.sampled_from((1, 7, 4088, 4096, 8192, 131064)))
    stream = [(1, channel, args),
              (2, channel, hf.content_header(size, draw(_properties)))]
    stream += [(3, channel, body[i:i + chunk])
               for i in range(0, size, chunk)]
    return stream


@st.composite
def streams(draw):
    """Messages on up to three channels, interleaved frame by frame,
    with heartbeats between."""
    queues = []
    for channel in range(1, draw(st.integers(1, 3)) + 1):
        messages = draw(st.lists(_message(channel, channel * 1000),
                                 min_size=1, max_size=3))
        queues.append([f for m in messages for f in m])
    stream = []
    while any(queues):
        live = [q for q in queues if q]
        stream.append(draw(st.sampled_from(live)).pop(0))
        if draw(st.integers(0, 9)) == 0:
            stream.append((8, 0, b''))
    return stream


HEALTH = [HealthCheck.too_slow, HealthCheck.data_too_large,
          HealthCheck.large_base_example]


@settings(max_examples=300, deadline=None, derandomize=CI, database=None,
          suppress_health_check=HEALTH)
@given(streams())
def test_well_formed_streams_as_py_amqp(stream):
    handler, ours = both(stream)
    assert handler.faults == 0 and handler.current is None
    for msg_calls in ours.calls:
        assert msg_calls is not None


_PAYLOADS = (struct.pack('>HH', *DELIVER) + hf.deliver_args(1),
             struct.pack('>HHQB', 60, 80, 1, 0),
             hf.content_header(0, hf.properties()),
             hf.content_header(3, hf.properties()), b'abc')


@settings(max_examples=300, deadline=None, derandomize=CI, database=None,
          suppress_health_check=HEALTH)
@given(st.lists(st.tuples(st.sampled_from((1, 2, 3, 4, 8)),
                          st.integers(0, 2), st.sampled_from(_PAYLOADS)),
                max_size=12))
@example([(1, 1, _PAYLOADS[0]), (2, 1, _PAYLOADS[1])])  # header of 13 bytes
def test_frame_order_errors_as_py_amqp(stream):
    both(stream)


@given(st.binary(max_size=64))
@settings(max_examples=200, deadline=None, derandomize=CI, database=None)
def test_random_header_payload_never_raises_but_framing(payload):
    """Whatever a content header holds, the message is passed on; only a
    header too short for a body size and property flags is a framing
    error (py-amqp's struct.error)."""
    recorder = Recorder()
    handler = frames.FrameHandler(FakeConnection(), recorder)
    handler((1, 1, struct.pack('>HH', *DELIVER) + hf.deliver_args(5)))
    payload = payload[:12] if len(payload) < 12 else \
        payload[:4] + b'\0' * 8 + payload[12:]          # no body
    if len(payload) < 14:
        with pytest.raises(FrameSyntaxError):
            handler((2, 1, payload))
        return
    assert handler((2, 1, payload)) is True
    assert recorder.last.zamqp_key is not None


# the hostile corpus, through a real (unconnected) py-amqp channel

class Consumer:
    def __init__(self, max_size=None, max_depth=frames.HEADER_DEPTH):
        self.connection = amqp.Connection('127.0.0.1:1')
        self.channel = amqp.Channel(self.connection, 1, auto_decode=False)
        self.received = []
        self.channel.callbacks['ctag'] = self.received.append
        self.handler = frames.install(self.connection, max_size, max_depth)

    def deliver(self, props, body, tag=7, frame_max=hf.FRAME_MAX, **args):
        for frame in hf.delivery(1, tag, props, body, frame_max, **args):
            self.connection.on_inbound_frame(frame)
        return self.received[-1]


def py_amqp_raises(props, body, **args):
    """Whether py-amqp's own handler and argument decoding raise."""
    def callback(channel, method_sig, payload, msg):
        loads('sLbss', payload, 4)
    try:
        handler = frame_handler(FakeConnection(), callback)
        for frame in hf.delivery(1, 7, props, body, **args):
            handler(frame)
    except Exception:
        return True
    return False


@pytest.mark.parametrize('case', hf.CASES, ids=[c.name for c in hf.CASES])
def test_corpus(case):
    consumer = Consumer()
    msg = consumer.deliver(case.properties, case.body,
                           routing_key=case.routing_key)
    assert isinstance(msg, amqp.Message)
    assert msg.delivery_info['delivery_tag'] == 7
    assert msg.delivery_info['consumer_tag'] == 'ctag'
    assert msg.body == case.body or not case.body and msg.body == ''
    assert msg.zamqp_key == (len(case.body), msg.zamqp_key[1])
    assert py_amqp_raises(case.properties, case.body,
                          routing_key=case.routing_key) == \
        (case.fault and not case.policy)
    if not case.fault:
        assert msg.zamqp_fault is None
        return
    assert msg.zamqp_fault.startswith('cannot decode')
    assert consumer.handler.faults == 1
    if case.routing_key != b'rk':
        assert msg.delivery_info['routing_key'] == r'bad\xff\xfe\xc3('
        assert 'routing_key not UTF-8' in msg.zamqp_fault
    else:
        assert msg.properties == {}
    assert consumer.handler.current is None
    # the next good message is delivered as usual
    good = consumer.deliver(hf.properties(message_id='next'), b'ok', tag=8)
    assert (good.zamqp_fault, good.properties, good.body) == \
        (None, {'message_id': 'next'}, b'ok')


def test_depth_check_reads_s_fields_as_py_amqp():
    """The nesting check reads a table's 's' field as the installed
    py-amqp does (a short string before 5.4, Python 3.9's), so it sees
    the nesting that follows one."""
    s = (hf.field('s', hf.shortstr('abc')) if hf.OLD_PY_AMQP
         else hf.field('s', 7))
    msg = Consumer().deliver(hf.headers(('s', s), ('n', hf.nested(40))),
                             b'x')
    assert msg.zamqp_fault is not None
    assert 'more than 32 levels' in msg.zamqp_fault


def test_fault_reasons():
    consumer = Consumer()
    msg = consumer.deliver(hf.headers(('t', hf.field('T', 2 ** 63))), b'x')
    assert 'cannot decode the content header' in msg.zamqp_fault
    assert 'out of range' in msg.zamqp_fault
    msg = consumer.deliver(hf.properties(message_id=hf.BAD_UTF8), b'x')
    assert 'UnicodeDecodeError' in msg.zamqp_fault
    msg = consumer.deliver(hf.headers(('n', hf.nested(40))), b'x')
    assert 'more than 32 levels' in msg.zamqp_fault
    msg = consumer.deliver(hf.properties(), b'x', exchange=hf.BAD_UTF8,
                           routing_key=b'\xff' * 255)
    assert msg.zamqp_fault == (
        'cannot decode Basic.Deliver: exchange, routing_key not UTF-8 '
        r'(passed on with \xNN escapes)')
    assert msg.delivery_info['routing_key'] == r'\xff' * 63 + r'\xf'
    assert msg.delivery_info['exchange'] == r'bad\xff\xfe\xc3('


def test_get_ok_and_return_with_bad_strings():
    """GetOk is checked before py-amqp sees it (a waiting basic_get is
    popped before its arguments are decoded); Return too."""
    recorder = Recorder()
    handler = frames.FrameHandler(FakeConnection(), recorder)
    conn = amqp.Connection('127.0.0.1:1')
    amqp.Channel(conn, 1, auto_decode=False)
    handler.connection = conn
    for sig, args in ((GET_OK, hf.get_ok_args(3, routing_key=hf.BAD_UTF8)),
                      (RETURN, hf.return_args(reply_text=hf.BAD_UTF8))):
        handler((1, 1, struct.pack('>HH', *sig) + args))
        handler((2, 1, hf.content_header(0, hf.properties())))
        msg = recorder.last
        assert 'not UTF-8' in msg.zamqp_fault
        loads(amqp.Channel._METHODS[sig].args, msg.frame_args, 4)


def test_py_amqp_decodes_arguments_before_listeners():
    """The re-dispatch of a Deliver with bad strings relies on this:
    py-amqp raises before it calls any listener."""
    consumer = Consumer()
    calls = []
    consumer.channel.callbacks['ctag'] = calls.append
    for frame in hf.delivery(1, 7, hf.properties(), b'x',
                             routing_key=hf.BAD_UTF8):
        consumer.connection.on_inbound_frame(frame)
    assert len(calls) == 1 and calls[0].zamqp_fault


def test_unicode_error_of_the_callback_itself_propagates():
    def callback(msg):
        raise UnicodeDecodeError('utf-8', b'\xff', 0, 1, 'from the callback')
    consumer = Consumer()
    consumer.channel.callbacks['ctag'] = callback
    with pytest.raises(UnicodeDecodeError, match='from the callback'):
        consumer.deliver(hf.properties(), b'x')
    channel, tag, key = consumer.handler.current
    assert (channel, tag, key[0]) == (1, 7, 1)


def test_current_names_the_delivery_being_assembled():
    consumer = Consumer()
    stream = hf.delivery(1, 42, hf.properties(), b'x' * 10, frame_max=13)
    consumer.connection.on_inbound_frame(stream[0])
    assert consumer.handler.current == (1, 42, None)
    consumer.connection.on_inbound_frame(stream[1])
    channel, tag, key = consumer.handler.current
    assert (channel, tag, key) == (1, 42, (10, key[1]))
    for frame in stream[2:]:
        consumer.connection.on_inbound_frame(frame)
    assert consumer.handler.current is None
    assert consumer.received[-1].zamqp_key == key


def test_key_is_the_same_for_the_same_header():
    consumer = Consumer()
    props = hf.properties(message_id='m1')
    first = consumer.deliver(props, b'abc', tag=1).zamqp_key
    again = consumer.deliver(props, b'abc', tag=2, redelivered=True)
    other = consumer.deliver(hf.properties(message_id='m2'), b'abc', tag=3)
    assert again.zamqp_key == first != other.zamqp_key
    bad = consumer.deliver(hf.properties(type=hf.BAD_UTF8), b'abc')
    assert bad.zamqp_fault and bad.zamqp_key[0] == 3


# bodies over max_size

def test_oversized_body_is_counted_and_dropped():
    consumer = Consumer(max_size=1000)
    handler = consumer.handler
    stream = hf.delivery(1, 9, hf.properties(message_id='big'),
                         b'z' * 10000, frame_max=108)
    assert len(stream) == 2 + 100
    for frame in stream[:-1]:
        consumer.connection.on_inbound_frame(frame)
        pending = handler.partial.get(1)
        if pending is not None:
            assert pending._pending_chunks == []
    assert consumer.received == []
    consumer.connection.on_inbound_frame(stream[-1])
    msg = consumer.received[-1]
    assert msg.body == b''
    assert msg.properties == {'message_id': 'big'}
    assert msg.zamqp_fault.startswith(
        'the body has 10000 bytes, more than max_size=1000: not decoded')
    assert msg.delivery_info['delivery_tag'] == 9
    assert (handler.discarded, handler.discarding) == (10000, set())
    at_limit = consumer.deliver(hf.properties(), b'y' * 1000, frame_max=108)
    assert (at_limit.zamqp_fault, at_limit.body) == (None, b'y' * 1000)


def test_oversized_and_undecodable():
    consumer = Consumer(max_size=10)
    msg = consumer.deliver(hf.properties(app_id=hf.BAD_UTF8), b'q' * 50,
                           frame_max=28)
    assert msg.body == b'' and msg.properties == {}
    assert 'cannot decode' in msg.zamqp_fault
    assert 'more than max_size=10:' in msg.zamqp_fault


# nesting depth

def test_depth_check_is_iterative():
    props = hf.headers(('n', hf.nested(100000)))
    header = hf.content_header(0, props)
    assert frames._too_deep(header, frames.HEADER_DEPTH)
    assert not frames._too_deep(header, 200000)       # walked to the end
    for depth in (frames.HEADER_DEPTH, None, 200000):
        consumer = Consumer(max_depth=depth)
        msg = consumer.deliver(props, b'')
        assert msg.zamqp_fault.startswith('cannot decode the content header')


def test_depth_limit_edges():
    consumer = Consumer()
    ok = consumer.deliver(hf.headers(('n', hf.nested(31))), b'')
    assert ok.zamqp_fault is None
    assert isinstance(ok.headers['n'], dict)
    deep = consumer.deliver(hf.headers(('n', hf.nested(32, 'A'))), b'')
    assert 'HEADER_DEPTH' in deep.zamqp_fault
    # many F and A bytes, but flat: decoded
    flat = consumer.deliver(hf.headers(*((f'F{i}', hf.field('S', hf.longstr(
        'FAFAFA'))) for i in range(40))), b'')
    assert flat.zamqp_fault is None and len(flat.headers) == 40


# framing errors still raise

def test_framing_errors_raise_amqp_errors():
    consumer = Consumer()
    on_frame = consumer.connection.on_inbound_frame
    with pytest.raises(UnexpectedFrame):
        on_frame((2, 1, hf.content_header(0, hf.properties())))
    with pytest.raises(FrameSyntaxError):
        on_frame((1, 1, b'\x00'))
    on_frame((1, 1, struct.pack('>HH', *DELIVER) + hf.deliver_args(1)))
    with pytest.raises(FrameSyntaxError):
        on_frame((2, 1, b'\x00\x3c\x00\x00'))
