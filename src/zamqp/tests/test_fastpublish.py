"""Differential tests of zamqp.fastpublish against py-amqp (issue 13).

The reference is py-amqp itself: ``Channel.basic_publish`` of a real
``amqp.Message`` through py-amqp's own ``frame_writer``, on a stub
connection (frame_max, client_properties) whose transport only collects
the bytes written. PublishFrames.build must return exactly those bytes,
or None (decline); wherever py-amqp raises, it must decline.

Pure unit tests without a broker, but for one test of ChannelWriter
through RabbitMQ. No example database is written; under $CI
the examples are derandomized.
"""
from __future__ import annotations

import contextlib
import os
import socket
import struct
import tempfile
import time
from collections import OrderedDict
from datetime import date
from datetime import datetime
from datetime import timedelta
from datetime import timezone
from decimal import Decimal

import amqp
import pytest
from amqp.method_framing import frame_writer
from hypothesis import HealthCheck
from hypothesis import configuration as hypothesis_configuration
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from zamqp import AMQPProps
from zamqp.fastpublish import ChannelWriter
from zamqp.fastpublish import PublishFrames
from zamqp.testhelpers import broker_url

CI = bool(os.environ.get('CI'))
if not os.environ.get('HYPOTHESIS_STORAGE_DIRECTORY'):
    hypothesis_configuration.set_hypothesis_home_dir(
        os.path.join(tempfile.gettempdir(), 'zamqp-hypothesis'))


def diff_settings(max_examples):
    return settings(max_examples=max_examples, deadline=None,
                    database=None, derandomize=CI, print_blob=False,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much,
                                           HealthCheck.large_base_example])


# -- the reference: py-amqp's own publish path -----------------------------

class _Transport:
    def __init__(self):
        self.written = []

    def write(self, data):
        self.written.append(bytes(data))

    def having_timeout(self, timeout):
        return contextlib.nullcontext()


class _Connection:
    def __init__(self, frame_max):
        self.frame_max = frame_max
        self.bytes_sent = 0
        self.client_properties = {}
        self.transport = _Transport()
        self.frame_writer = frame_writer(self, self.transport)


def reference(channel_id, exchange, routing_key, mandatory, frame_max,
              properties, body):
    """What py-amqp's basic_publish writes (it raises as py-amqp does)."""
    connection = _Connection(frame_max)
    channel = amqp.Channel.__new__(amqp.Channel)
    channel.connection = connection
    channel.channel_id = channel_id
    msg = amqp.Message(body, **properties)
    amqp.Channel._basic_publish(channel, msg, exchange, routing_key,
                                mandatory=mandatory)
    return b''.join(connection.transport.written)


def reference_or_error(*args):
    try:
        return reference(*args)
    except Exception as exc:    # py-amqp's failure: the fast path declines
        return exc


# -- strategies --------------------------------------------------------------

# text with non-ASCII, astral and lone surrogates (py-amqp: surrogatepass)
TEXT = st.text(st.characters(exclude_categories=()), max_size=100)


def utf8_len(s):
    return len(s.encode('utf-8', 'surrogatepass'))


SHORTSTR = st.one_of(
    TEXT.filter(lambda s: utf8_len(s) <= 255),
    st.text(st.sampled_from('aé€😀'), min_size=60, max_size=255).filter(
        lambda s: utf8_len(s) <= 255),
    st.sampled_from(['', 'x' * 255, 'é' * 127 + 'x']))
LONG_SHORTSTR = st.one_of(
    st.integers(256, 400).map(lambda n: 'x' * n),
    st.integers(128, 200).map(lambda n: 'é' * n),
    st.integers(64, 100).map(lambda n: '😀' * n))
KEY = st.one_of(SHORTSTR, st.binary(max_size=30))
DECIMAL = st.builds(
    lambda n, places: Decimal(n).scaleb(-places),
    st.integers(-2 ** 31 + 1, 2 ** 31 - 1), st.integers(0, 12))
FIXED_ZONES = st.sampled_from(
    [None, timezone.utc, timezone(timedelta(hours=5, minutes=30)),
     timezone(-timedelta(hours=8))])
DATETIME = st.datetimes(min_value=datetime(1970, 1, 2),
                        max_value=datetime(9999, 12, 30),
                        timezones=FIXED_ZONES)
LEAF = st.one_of(
    TEXT, st.binary(max_size=40), st.booleans(),
    st.integers(-128, 255),
    st.integers(-2 ** 31 + 1, 2 ** 31 - 1),
    st.sampled_from([2 ** 31 - 1, 2 ** 31, -2 ** 31 + 1, -2 ** 31,
                     2 ** 63 - 1, -2 ** 63]),
    st.integers(-2 ** 63, 2 ** 63 - 1),
    st.floats(), DECIMAL, DATETIME, st.none())
VALUE = st.recursive(
    LEAF,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.lists(children, max_size=3).map(tuple),
        st.dictionaries(KEY, children, max_size=4)),
    max_leaves=12)
TABLE = st.dictionaries(KEY, VALUE, max_size=6)

PROPERTIES = st.fixed_dictionaries({}, optional={
    'content_type': SHORTSTR,
    'content_encoding': SHORTSTR,
    'application_headers': TABLE,
    'delivery_mode': st.sampled_from([1, 2]),
    'priority': st.integers(0, 255),
    'correlation_id': SHORTSTR,
    'reply_to': SHORTSTR,
    'expiration': SHORTSTR,
    'message_id': SHORTSTR,
    'timestamp': st.integers(0, 2 ** 64 - 1),
    'type': SHORTSTR,
    'user_id': SHORTSTR,
    'app_id': SHORTSTR,
    'cluster_id': SHORTSTR,
})
#: values py-amqp coerces, rejects or fails on, or the fast path declines
ODD = st.one_of(
    st.decimals(), st.integers(), st.floats(),
    st.datetimes(timezones=FIXED_ZONES),
    st.sampled_from([True, 1.0, '2', b'2', 256, -1, 2 ** 64, bytearray(b'x'),
                     date(2020, 1, 1), {1, 2}, OrderedDict(a=1), 'x' * 300,
                     datetime(1969, 12, 31), Decimal('1E+2'), Decimal('NaN'),
                     Decimal('1E-300'), object()]))
ODD_PROPERTIES = st.dictionaries(
    st.sampled_from(['content_type', 'application_headers', 'delivery_mode',
                     'priority', 'message_id', 'timestamp', 'app_id',
                     'headers', 'body']),
    st.one_of(ODD, TABLE, st.dictionaries(KEY, ODD, max_size=2),
              st.dictionaries(st.one_of(st.integers(), LONG_SHORTSTR), LEAF,
                              min_size=1, max_size=1)),
    max_size=4)
FRAME_MAX = st.sampled_from([4096, 8192, 131072])
CHANNEL = st.one_of(st.integers(1, 65535), st.sampled_from([1, 65535]))


def make_body(seed, size):
    return (seed * (size // len(seed) + 1))[:size]


def body_size(data, frame_max, exchange, routing_key, properties):
    """A body size near a frame boundary: 0, 1, py-amqp's big-body
    threshold (which counts the method and header frames), one, two and
    three body frames."""
    chunk = frame_max - 8
    args = amqp.serialization.dumps(
        'Bssbb', (0, exchange, routing_key, False, False))
    try:
        props = amqp.Message(b'', **properties)._serialize_properties()
    except Exception:
        props = b''
    threshold = chunk - 40 - len(args) - len(props)
    base = data.draw(st.sampled_from(
        [0, 1, threshold, chunk, 2 * chunk, 3 * chunk]), label='base')
    if base <= 1:
        return base
    return max(0, base + data.draw(st.integers(-9, 9), label='delta'))


# -- differential properties ------------------------------------------------

@diff_settings(150)
@given(data=st.data(), channel_id=CHANNEL, exchange=SHORTSTR,
       routing_key=SHORTSTR, mandatory=st.booleans(), frame_max=FRAME_MAX,
       properties=PROPERTIES, seed=st.binary(min_size=1, max_size=8))
def test_same_bytes_as_py_amqp(data, channel_id, exchange, routing_key,
                               mandatory, frame_max, properties, seed):
    body = make_body(seed, body_size(data, frame_max, exchange,
                                     routing_key, properties))
    expected = reference(channel_id, exchange, routing_key, mandatory,
                         frame_max, properties, body)
    frames = PublishFrames(channel_id, exchange, routing_key, mandatory,
                           frame_max)
    got = frames.build(properties, body)
    if got is None:
        # the one accepted-type decline: an empty body behind a header
        # large enough for py-amqp's big-body branch
        # (py-amqp 5.3.1 writes no content header there, 5.4 does)
        assert body == b''
        args = amqp.serialization.dumps(
            'Bssbb', (0, exchange, routing_key, mandatory, False))
        props = amqp.Message(body, **properties)._serialize_properties()
        assert len(args) + len(props) + 40 > frame_max - 8
    else:
        assert got == expected


@diff_settings(60)
@given(channel_id=CHANNEL, exchange=SHORTSTR, routing_key=SHORTSTR,
       mandatory=st.booleans(), frame_max=FRAME_MAX,
       messages=st.lists(st.tuples(PROPERTIES, st.binary(max_size=300)),
                         min_size=1, max_size=5),
       common=PROPERTIES)
def test_reused_header_cache(channel_id, exchange, routing_key, mandatory,
                             frame_max, messages, common):
    """One PublishFrames, many messages: those sharing static properties
    hit the cache, the others replace it; every one is py-amqp's bytes."""
    frames = PublishFrames(channel_id, exchange, routing_key, mandatory,
                           frame_max)
    for own, body in messages:
        for properties in (own, {**common, **own}, dict(common)):
            expected = reference(channel_id, exchange, routing_key,
                                 mandatory, frame_max, properties, body)
            assert frames.build(properties, body) == expected


@diff_settings(150)
@given(properties=ODD_PROPERTIES, body=st.one_of(
    st.binary(max_size=20), st.text(max_size=5),
    st.binary(max_size=5).map(bytearray)))
def test_odd_values_match_or_decline(properties, body):
    """Whatever py-amqp coerces or rejects: the same bytes or a decline,
    and always a decline where py-amqp raises."""
    expected = reference_or_error(7, 'ex', 'rk', False, 4096,
                                  properties, body)
    got = PublishFrames(7, 'ex', 'rk', False, 4096).build(properties, body)
    if isinstance(expected, Exception):
        assert got is None
    elif got is not None:
        assert got == expected


@diff_settings(40)
@given(exchange=st.one_of(LONG_SHORTSTR, SHORTSTR),
       routing_key=st.one_of(LONG_SHORTSTR, SHORTSTR))
def test_long_names_refused_by_both(exchange, routing_key):
    expected = reference_or_error(1, exchange, routing_key, False, 4096,
                                  {}, b'x')
    if isinstance(expected, Exception):
        assert isinstance(expected, struct.error)
        with pytest.raises(struct.error):
            PublishFrames(1, exchange, routing_key, False, 4096)
    else:
        frames = PublishFrames(1, exchange, routing_key, False, 4096)
        assert frames.build({}, b'x') == expected


# -- fixed examples ------------------------------------------------------

SIMPLE = bytes.fromhex(
    # method frame: type 1, channel 1, size 13; Basic.Publish (60, 40),
    # reserved 0, exchange 'ex', routing key 'rk', bits 0
    '01 0001 0000000d 003c 0028 0000 02 6578 02 726b 00 ce'
    # header frame: type 2, size 26; class 60, weight 0, body size 2,
    # flags content_type|delivery_mode, 'text/plain', 2
    '02 0001 0000001a 003c 0000 0000000000000002 9000'
    ' 0a 746578742f706c61696e 02 ce'
    # body frame: type 3, size 2, 'hi'
    '03 0001 00000002 6869 ce')


def test_simple_message_bytes():
    properties = {'content_type': 'text/plain', 'delivery_mode': 2}
    frames = PublishFrames(1, 'ex', 'rk', False, 4096)
    assert frames.build(properties, b'hi') == SIMPLE
    assert reference(1, 'ex', 'rk', False, 4096, properties, b'hi') == SIMPLE
    assert frames.method_frame == SIMPLE[:21]


def test_mandatory_and_empty_body():
    frames = PublishFrames(3, '', 'q', True, 4096)
    got = frames.build({}, b'')
    assert got == reference(3, '', 'q', True, 4096, {}, b'')
    # no body frame for an empty body, the mandatory bit set
    assert got.endswith(bytes.fromhex(
        '02 0003 0000000e 003c 0000 0000000000000000 0000 ce'))
    assert frames.method_frame[-2:] == b'\x01\xce'


def test_body_split_at_frame_max():
    frames = PublishFrames(1, 'ex', 'rk', False, 4096)
    body = bytes(range(256)) * 40            # 10240 bytes: 3 frames
    got = frames.build({'delivery_mode': 1}, body)
    assert got == reference(1, 'ex', 'rk', False, 4096,
                            {'delivery_mode': 1}, body)
    assert got.count(b'\x03\x00\x01\x00\x00\x0f\xf8') == 2   # 4088 bytes


@pytest.mark.parametrize('properties, body', [
    ({}, 'text'),                                   # str body
    ({}, bytearray(b'x')),
    ({}, memoryview(b'x')),
    ({'headers': {}}, b'x'),                        # unknown name
    ({'delivery_mode': True}, b'x'),                # coerced bool
    ({'delivery_mode': 1.0}, b'x'),
    ({'delivery_mode': '2'}, b'x'),
    ({'priority': 256}, b'x'),
    ({'priority': -1}, b'x'),
    ({'message_id': 'x' * 256}, b'x'),
    ({'message_id': 'é' * 128}, b'x'),
    ({'message_id': 12}, b'x'),
    ({'content_type': 0}, b'x'),
    ({'timestamp': datetime(2024, 1, 1)}, b'x'),   # py-amqp raises
    ({'timestamp': 1.5}, b'x'),
    ({'timestamp': -1}, b'x'),
    ({'timestamp': 2 ** 64}, b'x'),
    ({'application_headers': [('a', 1)]}, b'x'),
    ({'application_headers': OrderedDict(a=1)}, b'x'),
    ({'application_headers': {'a': {1, 2}}}, b'x'),
    ({'application_headers': {'a': bytearray(b'x')}}, b'x'),
    ({'application_headers': {'a': date(2020, 1, 1)}}, b'x'),
    ({'application_headers': {'a': 2 ** 63}}, b'x'),
    ({'application_headers': {'a': Decimal('NaN')}}, b'x'),
    ({'application_headers': {'a': Decimal('1E+2')}}, b'x'),
    ({'application_headers': {'a': Decimal(2 ** 40)}}, b'x'),
    ({'application_headers': {'a': datetime(1969, 12, 31)}}, b'x'),
    ({'application_headers': {'k' * 256: 1}}, b'x'),
    ({'application_headers': {1: 1}}, b'x'),
    ({'application_headers': {'a': [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]
                                       ]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}}, b'x'),
    ({'application_headers': {'x': 'y' * 5000}}, b''),  # big empty body
])
def test_declines(properties, body):
    frames = PublishFrames(1, 'ex', 'rk', False, 4096)
    assert frames.build(properties, body) is None
    assert not frames.supports(properties, body)


def test_cache_checks_value_types():
    """Equal values of another type (1 and True, 1 and 1.0) miss the
    header cache: py-amqp coerces or raises for them."""
    frames = PublishFrames(1, 'ex', 'rk', False, 4096)
    assert frames.build({'delivery_mode': 1}, b'x') is not None
    assert frames.build({'delivery_mode': 1.0}, b'x') is None
    assert frames.build({'delivery_mode': True}, b'x') is None
    assert frames.build({'delivery_mode': 1}, b'x') == reference(
        1, 'ex', 'rk', False, 4096, {'delivery_mode': 1}, b'x')


def test_none_is_absent():
    properties = {'content_type': None, 'message_id': None,
                  'application_headers': None, 'delivery_mode': 2}
    frames = PublishFrames(1, 'ex', 'rk', False, 4096)
    assert frames.build(properties, b'x') == reference(
        1, 'ex', 'rk', False, 4096, properties, b'x')


@pytest.mark.parametrize('args', [
    (0, 'ex', 'rk', False, 4096),
    (65536, 'ex', 'rk', False, 4096),
    (1, 'ex', 'rk', False, 1024),
])
def test_constructor_checks(args):
    with pytest.raises(ValueError):
        PublishFrames(*args)


def test_constructor_needs_names():
    with pytest.raises(TypeError):
        PublishFrames(1, None, 'rk')


class _NoEquality:
    def __eq__(self, other):
        raise AssertionError('compared')

    __hash__ = None


def test_cache_compares_types_first():
    """A value of an unaccepted type is declined without an == against
    the cached value (numpy arrays, for one, raise there)."""
    frames = PublishFrames(1, 'ex', 'rk', False, 4096)
    assert frames.build({'content_type': 'a'}, b'x') is not None
    assert frames.build({'content_type': _NoEquality()}, b'x') is None


# -- ChannelWriter: the producer's publish, fast or through py-amqp ---------

class _Channel(amqp.Channel):
    """A py-amqp channel on a stub connection (no broker): its
    basic_publish is py-amqp's own."""

    def __init__(self, connection, channel_id):   # noqa: D107 - stub
        self.connection = connection
        self.channel_id = channel_id


def _written(connection):
    data = b''.join(connection.transport.written)
    connection.transport.written.clear()
    return data


def _publish_both(channel_id, exchange, routing_key, mandatory, frame_max,
                  messages):
    """(ChannelWriter's bytes or error, py-amqp's) for each message."""
    fast_conn = _Connection(frame_max)
    writer = ChannelWriter(_Channel(fast_conn, channel_id), exchange,
                           mandatory)
    slow_conn = _Connection(frame_max)
    slow = _Channel(slow_conn, channel_id)
    results = []
    for properties, body in messages:
        try:
            amqp.Message(body, **properties)
        except Exception:       # noqa: BLE001 - no message to publish
            continue
        outcome = []
        for publish, conn in (
                (lambda m: writer.publish(m, routing_key), fast_conn),
                (lambda m: slow.basic_publish(m, exchange, routing_key,
                                              mandatory=mandatory),
                 slow_conn)):
            try:
                publish(amqp.Message(body, **properties))
                outcome.append(_written(conn))
            except Exception as exc:    # the same exception type
                outcome.append(type(exc))
        results.append(tuple(outcome))
    return writer, results, fast_conn, slow_conn


@diff_settings(80)
@given(channel_id=CHANNEL, exchange=SHORTSTR, routing_key=SHORTSTR,
       mandatory=st.booleans(), frame_max=FRAME_MAX,
       messages=st.lists(st.tuples(st.one_of(PROPERTIES, ODD_PROPERTIES),
                                   st.one_of(st.binary(max_size=9000),
                                             TEXT)),
                         min_size=1, max_size=4))
def test_writer_same_bytes_and_errors_as_basic_publish(
        channel_id, exchange, routing_key, mandatory, frame_max, messages):
    """Messages fast or declined (str bodies, odd properties): the
    writer puts on the wire what basic_publish does, or raises what it
    raises, and counts each message once."""
    writer, results, fast_conn, slow_conn = _publish_both(
        channel_id, exchange, routing_key, mandatory, frame_max, messages)
    for fast, slow in results:
        assert fast == slow
    sent = sum(1 for fast, _ in results if isinstance(fast, bytes))
    assert fast_conn.bytes_sent == slow_conn.bytes_sent == sent
    assert writer.fast + writer.declined == len(results)


def test_writer_counts_paths():
    conn = _Connection(131072)
    writer = ChannelWriter(_Channel(conn, 1), 'ex', False)
    writer.publish(amqp.Message(b'x', delivery_mode=2), 'key')
    writer.publish(amqp.Message('text'), 'key')          # str: declined
    assert (writer.fast, writer.declined) == (1, 1)
    assert conn.bytes_sent == 2


def test_writer_long_routing_key_raises_as_py_amqp():
    conn = _Connection(131072)
    writer = ChannelWriter(_Channel(conn, 1), 'ex', False)
    with pytest.raises(struct.error):
        writer.publish(amqp.Message(b'x'), 'k' * 256)
    assert writer.declined == 1 and not conn.transport.written


def test_writer_closed_connection_raises_as_py_amqp():
    channel = _Channel(None, 1)
    with pytest.raises(amqp.exceptions.RecoverableConnectionError):
        ChannelWriter(channel, 'ex').publish(amqp.Message(b'x'), 'key')


class _TimingOut(_Transport):
    def write(self, data):
        raise socket.timeout('timed out')


def test_writer_write_timeout_is_a_connection_error_as_in_py_amqp():
    raised = []
    for use_writer in (True, False):
        conn = _Connection(131072)
        conn.transport = _TimingOut()
        conn.frame_writer = frame_writer(conn, conn.transport)
        channel = _Channel(conn, 1)
        with pytest.raises(Exception) as info:
            if use_writer:
                ChannelWriter(channel, 'ex').publish(amqp.Message(b'x'), 'k')
            else:
                channel.basic_publish(amqp.Message(b'x'), 'ex', 'k')
        raised.append(type(info.value))
    assert raised[0] is raised[1]


def test_writer_drains_first_when_blocked_capability_is_on():
    """With connection.blocked in client_properties py-amqp reads what
    the broker sent (a connection.blocked) before it publishes; so does
    the writer, and a connection closed by that read is an error."""
    calls = []
    for use_writer in (True, False):
        conn = _Connection(131072)
        conn.client_properties = {'capabilities': {'connection.blocked':
                                                   True}}
        conn.drain_events = lambda timeout, c=conn: calls.append(
            (use_writer, timeout))
        channel = _Channel(conn, 1)
        message = amqp.Message(b'x')
        if use_writer:
            ChannelWriter(channel, 'ex').publish(message, 'k')
        else:
            channel.basic_publish(message, 'ex', 'k')
    assert calls == [(True, 0), (False, 0)]


def test_writer_on_a_real_broker(admin):
    """Through RabbitMQ: what the fast path sends arrives whole, with
    every property, in order with what py-amqp's path sent."""
    name = f'zamqp.test.fastpublish.{os.getpid()}'
    admin.channel.queue_declare(name, durable=True, auto_delete=False)
    props = AMQPProps(url=broker_url())
    conn = amqp.Connection(props.address, userid=props.user,
                           password=props.password,
                           virtual_host=props.virtual_host)
    conn.connect()
    try:
        channel = conn.channel()
        writer = ChannelWriter(channel, '')
        big = bytes(range(256)) * 2000          # 512 KB: many body frames
        sent = [amqp.Message(b'one', message_id='1', delivery_mode=2,
                             application_headers={'a': [1, 'b', 2.5]}),
                amqp.Message('two'),            # str: py-amqp's path
                amqp.Message(big, content_type='application/octet-stream',
                             timestamp=12345, priority=3)]
        for msg in sent:
            writer.publish(msg, name)
        assert (writer.fast, writer.declined) == (2, 1)
        deadline = time.monotonic() + 10
        while admin.queue_depth(name) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        got = admin.take(name)
        assert [m.body for m in got] == [b'one', 'two', big]  # utf-8 text
        first, _, last = (m.properties for m in got)
        assert first['application_headers'] == {'a': [1, 'b', 2.5]}
        assert first['message_id'] == '1' and first['delivery_mode'] == 2
        assert last['timestamp'] in (12345, datetime.fromtimestamp(
            12345, timezone.utc))  # py-amqp 5.4: int, 5.3: datetime
        assert last['priority'] == 3
        assert last['content_type'] == 'application/octet-stream'
    finally:
        conn.close()
        admin.channel.queue_delete(name)
