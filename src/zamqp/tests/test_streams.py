"""Stream readers: start positions, retention settings, offset stores
(no broker), and readers on the real broker: catching up after a stop,
retries and dead letters, retention gaps, hostile headers, kill -9."""
import datetime
import json
import logging
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time

import amqp
import pytest

from zamqp import AMQPConsumer
from zamqp import AMQPProducer
from zamqp import AMQPThread
from zamqp import ConfigurationError
from zamqp import streams
from zamqp.exceptions import MessageRefused
from zamqp.exceptions import OffsetStoreError
from zamqp.interfaces import IOffsetStore
from zamqp.offsets import FileOffsetStore
from zamqp.streams import StreamDeclaration
from zamqp.streams import StreamReader
from zamqp.streams import start_argument
from zamqp.testhelpers import broker_props
from zamqp.testhelpers import broker_url
from zamqp.testhelpers import unique
from zamqp.testhelpers import wait_for
from zamqp.tests import brokers

UTC = datetime.timezone.utc


# start positions and retention (no broker)

@pytest.mark.parametrize('start, expected', [
    ('next', 'next'), ('first', 'first'), ('last', 'last'),
    ('1h', '1h'), ('7D', '7D'), ('30m', '30m'), (0, 0), (123, 123),
    (datetime.datetime(2026, 12, 1, 10, 0, tzinfo=UTC),
     datetime.datetime(2026, 12, 1, 10, 0)),
    (datetime.datetime(2026, 12, 1, 11, 0, tzinfo=datetime.timezone(
        datetime.timedelta(hours=1))), datetime.datetime(2026, 12, 1, 10)),
    ('2026-12-01T10:00:00Z', datetime.datetime(2026, 12, 1, 10, 0)),
    ('2026-12-01T12:00:00+02:00', datetime.datetime(2026, 12, 1, 10, 0)),
])
def test_start_positions(start, expected):
    assert start_argument(start) == expected


@pytest.mark.parametrize('start, words', [
    ('nxt', "start='nxt' is not understood"),
    ('1 h', "start='1 h' is not understood"),
    ('0h', "start='0h'"),
    ('2026-12-01T10:00:00', 'has no timezone'),
    (datetime.datetime(2026, 12, 1), 'has no timezone'),
    (-1, 'start=-1 is not understood'),
    (True, 'start=True'),
    (1.5, 'start=1.5'),
    (None, 'start=None'),
])
def test_bad_start_positions_are_refused_by_name(start, words):
    with pytest.raises(ConfigurationError) as info:
        start_argument(start)
    assert words in str(info.value)
    assert 'next, first' in str(info.value) or 'timezone' in str(info.value)


def test_retention_defaults_and_none():
    declaration = StreamDeclaration('s')
    assert declaration.arguments() == {
        'x-queue-type': 'stream', 'x-max-age': '7D',
        'x-max-length-bytes': 1_000_000_000,
        'x-stream-max-segment-size-bytes': 50_000_000}
    assert declaration.flags() == dict(exclusive=False, durable=True,
                                       auto_delete=False)
    assert StreamDeclaration('s', max_age=None, max_length_bytes=None,
                             max_segment_size_bytes=None).arguments() == \
        {'x-queue-type': 'stream'}


@pytest.mark.parametrize('kw, words', [
    (dict(max_age='7 days'), "max_age='7 days' is not an interval"),
    (dict(max_age=7), 'max_age=7 is not an interval'),
    (dict(max_length_bytes=0), 'max_length_bytes=0 is not a number'),
    (dict(max_length_bytes='1GB'), "max_length_bytes='1GB'"),
    (dict(max_segment_size_bytes=-5), 'max_segment_size_bytes=-5'),
    (dict(queue_arguments={'x-queue-type': 'quorum'}),
     "x-queue-type 'quorum'"),
])
def test_bad_retention_is_refused_by_name(kw, words):
    with pytest.raises(ConfigurationError) as info:
        StreamDeclaration('s', **kw)
    assert words in str(info.value)


def consumer(tmp_path, **kw):
    kw.setdefault('stream', True)
    kw.setdefault('reader', 'r1')
    kw.setdefault('offsets', str(tmp_path))
    return AMQPConsumer('s', broker_props(exchange=unique()), print, **kw)


@pytest.mark.parametrize('kw, words', [
    (dict(stream=False), 'reader, offsets apply to stream readers only'),
    (dict(stream=False, reader=None, offsets=None, start='first'),
     'start applies to stream readers only'),
    (dict(shared=True), 'shared=True does not go with stream=True'),
    (dict(ack=False), 'ack=False does not go with stream=True'),
    (dict(durable=False), 'durable=False does not go'),
    (dict(queue_type='quorum'), "queue_type='quorum' does not go"),
    (dict(reader=None), 'reader=None cannot name a stream reader'),
    (dict(reader=' '), "reader=' ' cannot name"),
    (dict(reader='a\nb'), 'cannot name a stream reader'),
    (dict(offsets=None), 'a stream reader needs offsets='),
    (dict(offsets=42), 'offsets=42 is not a directory path'),
    (dict(prefetch=0), 'prefetch=0 does not go with stream=True'),
    (dict(start='frist'), "start='frist' is not understood"),
    (dict(max_age='1w'), "max_age='1w' is not an interval"),
    (dict(stream='yes'), "stream='yes' is not True or False"),
])
def test_bad_reader_settings_are_refused_by_name(tmp_path, kw, words):
    with pytest.raises(ConfigurationError) as info:
        consumer(tmp_path, **kw)
    assert words in str(info.value)


def test_offsets_that_is_a_file_is_refused(tmp_path):
    path = tmp_path / 'file'
    path.write_text('x')
    with pytest.raises(ConfigurationError, match='is a file, not a dir'):
        consumer(tmp_path, offsets=path)


def test_reader_defaults(tmp_path):
    reader = consumer(tmp_path)
    assert reader.queue_name == 's' and reader.ack and reader.prefetch == 1000
    assert reader.dead_letter_exchange == reader.props.exchange + '.dead'
    assert reader.declaration.arguments()['x-queue-type'] == 'stream'
    assert isinstance(reader.reader.store, FileOffsetStore)
    assert reader.status()['reader'] == 'r1'
    assert reader.status()['position'] is None


# offset stores (no broker)

def test_file_store_saves_and_loads(tmp_path):
    store = FileOffsetStore(tmp_path / 'new' / 'dir')
    assert IOffsetStore.providedBy(store)
    assert store.load('orders/stream', 'r 1') is None
    store.save('orders/stream', 'r 1', 41)
    assert store.load('orders/stream', 'r 1') == 41
    assert store.load('orders/stream', 'r 2') is None
    store.save('orders/stream', 'r 1', 40)     # lower: ignored
    assert store.load('orders/stream', 'r 1') == 41
    [name] = os.listdir(tmp_path / 'new' / 'dir')
    assert name == 'orders%2Fstream@r%201.offset'
    assert json.loads((tmp_path / 'new' / 'dir' / name).read_text()) == \
        {'stream': 'orders/stream', 'reader': 'r 1', 'offset': 41}
    assert oct(os.stat(tmp_path / 'new' / 'dir').st_mode & 0o777) == '0o700'


@pytest.mark.parametrize('text', [
    '', '{"stream": "s", "reader": "r", "off', 'null',
    '{"stream": "s", "reader": "other", "offset": 3}',
    '{"stream": "s", "reader": "r", "offset": -2}',
    '{"stream": "s", "reader": "r", "offset": "3"}',
    '{"stream": "s", "reader": "r", "offset": true}',
])
def test_a_damaged_position_file_is_an_error_naming_it(tmp_path, text):
    store = FileOffsetStore(tmp_path)
    path = store.path('s', 'r')
    with open(path, 'w') as file:
        file.write(text)
    with pytest.raises(OffsetStoreError) as info:
        store.load('s', 'r')
    assert path in str(info.value)
    assert 'delete it to begin' in str(info.value)


def test_a_failed_write_keeps_the_old_position(tmp_path, monkeypatch):
    store = FileOffsetStore(tmp_path)
    store.save('s', 'r', 5)

    def crash(src, dst):
        raise OSError('disk gone')

    monkeypatch.setattr(os, 'replace', crash)
    with pytest.raises(OSError, match='disk gone'):
        store.save('s', 'r', 9)
    monkeypatch.undo()
    assert store.load('s', 'r') == 5
    assert sorted(os.listdir(tmp_path)) == ['s@r.offset']   # no leftovers


def test_one_process_per_reader_name(tmp_path):
    store = FileOffsetStore(tmp_path)
    store.lock('s', 'r')
    with pytest.raises(OffsetStoreError, match='already runs in this proc'):
        store.lock('s', 'r')
    script = textwrap.dedent(f'''
        from zamqp.offsets import FileOffsetStore
        from zamqp.exceptions import OffsetStoreError
        store = FileOffsetStore({str(tmp_path)!r})
        try:
            store.lock('s', 'r')
        except OffsetStoreError as exc:
            print('refused', exc)
        else:
            print('locked')
        store.lock('s', 'other')
        print('other locked')
    ''')
    out = subprocess.run([sys.executable, '-c', script], capture_output=True,
                         text=True, timeout=60).stdout
    assert 'refused reader ' in out and 'another process' in out
    assert 'other locked' in out
    store.unlock('s', 'r')
    out = subprocess.run([sys.executable, '-c', script], capture_output=True,
                         text=True, timeout=60).stdout
    assert out.splitlines()[0] == 'locked'


class Message:
    """Stands for a delivered message of a stream."""

    def __init__(self, offset, headers=None):
        headers = dict(headers or {})
        if offset is not None:
            headers['x-stream-offset'] = offset
        self.properties = {'application_headers': headers}


class DictStore:
    def __init__(self, positions=None):
        self.positions = dict(positions or {})
        self.saves = []

    def load(self, stream, reader):
        return self.positions.get((stream, reader))

    def save(self, stream, reader, offset):
        self.saves.append(offset)
        self.positions[(stream, reader)] = offset


def test_reader_goes_on_from_the_saved_position():
    reader = StreamReader('s', 'r', DictStore({('s', 'r'): 41}), 'first')
    assert reader.consume_arguments() == {'x-stream-offset': 42}
    assert reader.seen(41) and not reader.seen(42)
    reader.delivered(Message(42))
    assert reader.gap is None
    reader.settled(Message(42))
    assert reader.position == 42 and reader.save() and \
        reader.store.saves == [42]
    assert reader.save() and reader.store.saves == [42]     # not moved


def test_reader_pins_a_relative_start_to_its_first_subscription():
    reader = StreamReader('s', 'r', DictStore(), 'next')
    before = datetime.datetime.now(UTC).replace(tzinfo=None)
    assert reader.consume_arguments() == {'x-stream-offset': 'next'}
    again = reader.consume_arguments()['x-stream-offset']
    assert isinstance(again, datetime.datetime)
    assert before - datetime.timedelta(seconds=2) <= again <= before
    reader = StreamReader('s', 'r', DictStore(), '1h')
    reader.consume_arguments()
    again = reader.consume_arguments()['x-stream-offset']
    assert abs((before - datetime.timedelta(hours=1) - again)
               .total_seconds()) < 3
    reader = StreamReader('s', 'r', DictStore(), 'first')
    reader.consume_arguments()
    assert reader.consume_arguments() == {'x-stream-offset': 'first'}


def test_reader_counts_what_retention_removed(caplog):
    reader = StreamReader('s', 'r', DictStore({('s', 'r'): 9}))
    reader.consume_arguments()
    reader.delivered(Message(25))
    assert reader.gap == (10, 25)
    reader.gap = None
    reader.delivered(Message(26))       # once per session
    assert reader.gap is None
    with caplog.at_level(logging.WARNING, logger='zamqp.streams'):
        assert reader.removed(10, 10) == 0     # offsets without messages
        assert reader.removed(10, None) == 0
        assert caplog.text == ''
        assert reader.removed(10, 25) == 15
    assert "removed up to 15 message(s) after its position 9" in caplog.text


def test_a_store_that_fails_is_logged_once_and_tried_again(caplog):
    class Failing(DictStore):
        fail = True

        def save(self, stream, reader, offset):
            if self.fail:
                raise OSError('read-only file system')
            super().save(stream, reader, offset)

    store = Failing()
    reader = StreamReader('s', 'r', store)
    reader.settled(Message(3))
    with caplog.at_level(logging.ERROR, logger='zamqp.streams'):
        assert not reader.save() and not reader.save()
    assert caplog.text.count('cannot save its position 3') == 1
    store.fail = False
    assert reader.save() and store.saves == [3]


@pytest.mark.parametrize('headers', [
    {}, {'x-stream-offset': 'x'}, {'x-stream-offset': -1},
    {'x-stream-offset': True}])
def test_a_message_without_a_stream_offset_is_refused(headers):
    message = Message(None, headers)
    with pytest.raises(MessageRefused, match='x-stream-offset'):
        streams.message_offset(message)


# readers on the broker

@pytest.fixture
def stream(admin, props):
    """A stream queue name; the stream and its dead letters go at the
    end."""
    name = unique('zamqp.test.stream')
    yield name
    admin.delete_queue(name)


class Received:
    def __init__(self):
        self.items = []

    def __call__(self, body, message):
        self.items.append((body, message.headers['x-stream-offset']))

    def bodies(self):
        return [body for body, _ in self.items]


def reader(stream, props, callback, offsets, **kw):
    kw.setdefault('reader', 'r1')
    return AMQPConsumer(stream, props, callback, stream=True,
                        offsets=str(offsets), pass_message=True, **kw)


def test_a_stopped_reader_gets_exactly_what_it_missed_in_order(
        stream, props, start, tmp_path):
    got = Received()
    thread = start(reader(stream, props, got, tmp_path))
    with AMQPProducer(stream, props, confirm=True) as producer:
        for n in range(10):
            producer(('live', n))
        assert wait_for(lambda: len(got.items) == 10, 10)
        assert thread.stop(5)
        assert thread.consumer.status()['saved_position'] == 9
        for n in range(1000):
            producer(('missed', n))
    got.items.clear()
    thread = start(reader(stream, props, got, tmp_path))
    assert wait_for(lambda: len(got.items) >= 1000, 20)
    time.sleep(0.3)
    assert got.bodies() == [('missed', n) for n in range(1000)]
    assert [offset for _, offset in got.items] == list(range(10, 1010))
    status = thread.consumer.status()
    assert (status['handled'], status['skipped'], status['missed']) == \
        (1000, 0, 0)


def test_readers_keep_positions_of_their_own(stream, props, start, tmp_path):
    first, second = Received(), Received()
    start(reader(stream, props, first, tmp_path, reader='a'))
    with AMQPProducer(stream, props, confirm=True) as producer:
        for n in range(5):
            producer(n)
        assert wait_for(lambda: len(first.items) == 5, 10)
        start(reader(stream, props, second, tmp_path, reader='b',
                     start='first'))
        assert wait_for(lambda: len(second.items) == 5, 10)
    assert first.bodies() == second.bodies() == list(range(5))


def test_start_first_and_offset(stream, props, start, tmp_path):
    with AMQPProducer(stream, props, confirm=True) as producer:
        got = Received()
        start(reader(stream, props, got, tmp_path / 'a'))   # declares
        assert wait_for(lambda: True)
        time.sleep(0.5)
        for n in range(6):
            producer(n)
    assert wait_for(lambda: len(got.items) == 6, 10)
    from_three = Received()
    start(reader(stream, props, from_three, tmp_path / 'b', start=3))
    assert wait_for(lambda: len(from_three.items) == 3, 10)
    time.sleep(0.3)
    assert from_three.bodies() == [3, 4, 5]


def test_a_failing_callback_is_retried_then_dead_lettered(
        stream, props, start, tmp_path, admin):
    calls = []

    def callback(body, message):
        calls.append(body)
        if body == 'poison':
            raise ValueError('cannot apply')

    consumer = reader(stream, props, callback, tmp_path, max_retries=2)
    start(consumer)
    with AMQPProducer(stream, props, confirm=True) as producer:
        producer('before')
        producer('poison')
        producer('after')
    assert wait_for(lambda: 'after' in calls, 10)
    assert calls == ['before', 'poison', 'poison', 'poison', 'after']
    assert wait_for(lambda: consumer.status()['position'] == 2, 5)
    [dead] = admin.take(props.exchange + '.dead')
    assert pickle.loads(dead.body) == 'poison'
    assert dead.headers['x-zamqp-error'] == 'ValueError: cannot apply'
    assert dead.headers['x-stream-offset'] == 1
    status = consumer.status()
    assert (status['failed'], status['dead_lettered'], status['handled']) \
        == (3, 1, 2)


def test_an_undecodable_message_is_dead_lettered_at_once(
        stream, props, start, tmp_path, admin):
    got = Received()
    consumer = reader(stream, props, got, tmp_path)
    start(consumer)
    admin.channel.basic_publish(
        amqp.Message(b'\x80\x05garbage', content_type='application/'
                     'x-python-serialize'), props.exchange, stream)
    with AMQPProducer(stream, props, confirm=True) as producer:
        producer('fine')
    assert wait_for(lambda: got.bodies() == ['fine'], 10)
    assert wait_for(lambda: consumer.status()['position'] == 1, 5)
    [dead] = admin.take(props.exchange + '.dead')
    assert dead.body == b'\x80\x05garbage'
    assert consumer.status()['refused'] == 1


def test_a_publisher_cannot_fake_a_stream_offset(stream, props, start,
                                                 tmp_path):
    got = Received()
    consumer = reader(stream, props, got, tmp_path)
    start(consumer)
    time.sleep(0.5)
    with AMQPProducer(stream, props, confirm=True) as producer:
        producer('faked', headers={'x-stream-offset': 10 ** 12})
        producer('next one')
    assert wait_for(lambda: len(got.items) == 2, 10)
    assert got.items == [('faked', 0), ('next one', 1)]
    assert wait_for(lambda: consumer.status()['saved_position'] == 1, 5)


def test_different_retention_is_refused_with_a_way_out(
        stream, props, start, tmp_path):
    start(reader(stream, props, Received(), tmp_path / 'a'))
    other = reader(stream, props, Received(), tmp_path / 'b', reader='b',
                   max_age='1D')
    thread = AMQPThread(other)
    with pytest.raises(Exception) as info:
        thread.start()
    text = str(info.value)
    assert 'inequivalent arg' in text and stream in text
    assert "give every reader of a stream the same max_age" in text
    assert other.status()['state'] == 'failed'
    passive = reader(stream, props, Received(), tmp_path / 'c', reader='c',
                     max_age='1D', declare='passive')
    start(passive)
    assert passive.status()['state'] == 'consuming'


def test_retention_gap_is_warned_and_counted(stream, props, start, tmp_path,
                                             caplog):
    kw = dict(max_length_bytes=20_000, max_segment_size_bytes=4_000,
              max_age=None)
    got = Received()
    consumer = reader(stream, props, got, tmp_path, **kw)
    start(consumer)
    time.sleep(0.5)
    with AMQPProducer(stream, props, confirm=True) as producer:
        producer('first')
        assert wait_for(lambda: consumer.status()['saved_position'] == 0, 5)
        consumer.stop()
        assert wait_for(lambda: consumer.status()['state'] == 'stopped', 5)
        for n in range(399):
            producer('x' * 200)
        producer('last')
    got.items.clear()
    again = reader(stream, props, got, tmp_path, **kw)
    with caplog.at_level(logging.WARNING, logger='zamqp.streams'):
        start(again)
        assert wait_for(lambda: got.items, 10)
    first = got.items[0][1]
    assert first > 1, 'retention removed nothing: test needs more messages'
    assert wait_for(lambda: again.status()['missed'] == first - 1, 5)
    assert f'removed up to {first - 1} message(s) after its position 0 ' \
        in caplog.text
    # the reader goes on from the first message kept, to the last
    assert wait_for(lambda: got.items[-1][0] == 'last', 10)
    assert len(got.items) < 400


READER_SCRIPT = '''
import sys, time
from zamqp import AMQPConsumer, AMQPThread, AMQPProps
url, exchange, stream, offsets, out = sys.argv[1:]
log = open(out, 'a', buffering=1)

def callback(body, message):
    log.write(f"{message.headers['x-stream-offset']} {body}\\n")
    time.sleep(0.002)

consumer = AMQPConsumer(stream, AMQPProps(url=url, exchange=exchange),
                        callback, stream=True, reader='killed',
                        offsets=offsets, pass_message=True, start='first')
AMQPThread(consumer).start()
print('ready', flush=True)
time.sleep(600)
'''


def test_kill_9_loses_nothing_and_repeats_since_the_saved_position(
        stream, props, tmp_path, start):
    start(reader(stream, props, Received(), tmp_path / 'declare'))
    out = tmp_path / 'handled.txt'
    script = tmp_path / 'reader.py'
    script.write_text(READER_SCRIPT)
    args = [sys.executable, str(script), broker_url(), props.exchange,
            stream, str(tmp_path / 'o'), str(out)]
    with AMQPProducer(stream, props, confirm=True) as producer:
        for n in range(2000):
            producer(n)

    def handled():
        if not out.exists():
            return []
        return [line.split() for line in out.read_text().splitlines()
                if line.count(' ') == 1]

    process = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == 'ready'
        assert wait_for(lambda: len(handled()) >= 700, 30)
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        before = len(handled())
        saved = FileOffsetStore(tmp_path / 'o').load(stream, 'killed')
        assert saved is not None and saved < before
        process = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
        assert process.stdout.readline().strip() == 'ready'
        assert wait_for(
            lambda: {int(o) for o, _ in handled()} == set(range(2000)), 60)
    finally:
        process.kill()
        process.wait(10)
    offsets = [int(o) for o, _ in handled()]
    duplicates = len(offsets) - 2000
    # at least once: what came again is what followed the saved position
    assert offsets[before:before + duplicates] == \
        list(range(saved + 1, saved + 1 + duplicates))
    assert duplicates == before - (saved + 1)
    from zamqp.tests.brokers import report
    report(f'kill -9 of a stream reader after {before} handled: position '
           f'saved at {saved}, {duplicates} handled again, none missed')



def test_offsets_without_messages_are_not_reported_missed(
        stream, props, start, tmp_path, caplog):
    """Offsets are not dense (the broker gives some to chunks without
    messages, as at the start of a segment): a reader that resumes at
    such an offset misses nothing and says so."""
    kw = dict(max_segment_size_bytes=4_000, max_age=None,
              max_length_bytes=None)
    got = Received()
    first = reader(stream, props, got, tmp_path / 'a', **kw)
    start(first)
    time.sleep(0.5)
    with AMQPProducer(stream, props, confirm=True) as producer:
        for n in range(100):
            producer('x' * 200)
    assert wait_for(lambda: len(got.items) == 100, 10)
    offsets = [offset for _, offset in got.items]
    gaps = [a for a, b in zip(offsets, offsets[1:]) if b != a + 1]
    assert gaps, 'no offset without a message: the test needs more'
    store = FileOffsetStore(tmp_path / 'b')
    store.save(stream, 'r1', gaps[0])       # resume at the gap
    got.items.clear()
    resumed = reader(stream, props, got, tmp_path / 'b', **kw)
    with caplog.at_level(logging.WARNING, logger='zamqp.streams'):
        start(resumed)
        assert wait_for(lambda: len(got.items) == 100 - offsets.index(
            gaps[0]) - 1, 10)
        time.sleep(0.5)
    assert got.items[0][1] > gaps[0] + 1
    assert resumed.status()['missed'] == 0
    assert 'removed' not in caplog.text


def test_two_stores_of_one_directory_in_one_process_share_the_lock(
        tmp_path):
    FileOffsetStore(tmp_path).lock('s', 'r')
    with pytest.raises(OffsetStoreError, match='already runs in this proc'):
        FileOffsetStore(str(tmp_path) + '/').lock('s', 'r')
    FileOffsetStore(tmp_path).unlock('s', 'r')
    FileOffsetStore(tmp_path).lock('s', 'r')
    FileOffsetStore(tmp_path).unlock('s', 'r')


def test_a_second_reader_of_the_same_name_fails_at_start(
        stream, props, start, tmp_path):
    start(reader(stream, props, Received(), tmp_path))
    twin = reader(stream, props, Received(), tmp_path)
    with pytest.raises(OffsetStoreError, match="reader 'r1' of stream"):
        AMQPThread(twin).start()
    assert twin.status()['state'] == 'failed'
    # the twin that failed did not release the running reader's lock
    with pytest.raises(OffsetStoreError, match='already runs in this proc'):
        FileOffsetStore(tmp_path).lock(stream, 'r1')


def test_a_damaged_position_stops_the_reader_with_its_own_error(
        stream, props, tmp_path):
    store = FileOffsetStore(tmp_path)
    with open(store.path(stream, 'r1'), 'w') as file:
        file.write('garbage')
    damaged = reader(stream, props, Received(), tmp_path)
    thread = AMQPThread(damaged)
    with pytest.raises(OffsetStoreError, match='delete it to begin'):
        thread.start()
    assert damaged.status()['state'] == 'failed'
    assert 'basic_consume' not in damaged.status()['last_error']
    store.lock(stream, 'r1')        # released when it stopped
    store.unlock(stream, 'r1')


def test_a_stream_declared_anew_behind_the_position_is_an_error(
        stream, props, start, tmp_path, caplog, admin):
    FileOffsetStore(tmp_path).save(stream, 'r1', 500)   # of the old one
    got = Received()
    with caplog.at_level(logging.ERROR, logger='zamqp.session'):
        start(reader(stream, props, got, tmp_path))
    assert "the stream holds nothing at or after the reader's position " \
        '500: it was deleted and declared again' in caplog.text
    assert 'delete its saved position' in caplog.text


def test_a_reader_at_its_position_starts_without_error(
        stream, props, start, tmp_path, caplog):
    got = Received()
    first = reader(stream, props, got, tmp_path)
    start(first)
    time.sleep(0.3)
    with AMQPProducer(stream, props, confirm=True) as producer:
        producer('a')
        assert wait_for(lambda: first.status()['saved_position'] == 0, 5)
        first.stop()
        assert wait_for(lambda: first.status()['state'] == 'stopped', 5)
        producer('b')
    got.items.clear()
    with caplog.at_level(logging.ERROR, logger='zamqp.session'):
        began = time.monotonic()
        start(reader(stream, props, got, tmp_path))
        started = time.monotonic() - began
    assert wait_for(lambda: got.bodies() == ['b'], 5)
    assert caplog.text == '' and started < 1.0


def test_amqp_events_travel_over_a_stream_reader(stream, props, start,
                                                 tmp_path, pings):
    """AMQPEvent and AMQPEventCallback work unchanged over a reader."""
    import zope.event
    from zamqp import AMQPEvent
    from zamqp import AMQPEventCallback
    from zamqp.tests.eventtypes import Ping
    consumer = AMQPConsumer(stream, props, AMQPEventCallback(), stream=True,
                            reader='events', offsets=str(tmp_path),
                            allow=['zamqp.tests.eventtypes.Ping'])
    start(consumer)
    time.sleep(0.5)
    zope.event.notify(AMQPEvent(stream, props, Ping('over a stream')))
    assert wait_for(lambda: pings, 10)
    assert [p.name for p in pings] == ['over a stream']
    assert consumer.status()['position'] == 0


def test_a_message_over_max_size_is_dead_lettered_and_passed(
        stream, props, start, tmp_path, admin):
    got = Received()
    consumer = reader(stream, props, got, tmp_path, max_size=1000)
    start(consumer)
    time.sleep(0.5)
    with AMQPProducer(stream, props, confirm=True) as producer:
        producer(b'x' * 5000)
        producer('small')
    assert wait_for(lambda: got.bodies() == ['small'], 10)
    assert wait_for(lambda: consumer.status()['position'] == 1, 5)
    status = consumer.status()
    assert (status['refused'], status['dead_lettered']) == (1, 1)
    [dead] = admin.take(props.exchange + '.dead')
    assert 'max_size' in dead.headers['x-zamqp-error'] or \
        '1000' in dead.headers['x-zamqp-error']


def test_a_slow_handler_holds_up_its_own_reader_only(stream, props, start,
                                                     tmp_path):
    slow, fast = Received(), Received()

    def sleepy(body, message):
        time.sleep(0.2)
        slow(body, message)

    start(reader(stream, props, sleepy, tmp_path, reader='slow'))
    start(reader(stream, props, fast, tmp_path, reader='fast'))
    time.sleep(0.5)
    with AMQPProducer(stream, props, confirm=True) as producer:
        for n in range(20):
            producer(n)
    assert wait_for(lambda: len(fast.items) == 20, 5)
    assert len(slow.items) < 20
    assert wait_for(lambda: len(slow.items) == 20, 10)
    assert slow.bodies() == fast.bodies() == list(range(20))


def test_lag_is_reported_in_status_and_metrics(stream, props, start,
                                               tmp_path, monkeypatch):
    from zamqp import metrics
    from zamqp.session import Session
    monkeypatch.setattr(Session, 'lag_interval', 0.2)
    release = __import__('threading').Event()
    got = Received()

    def held(body, message):
        release.wait(10)
        got(body, message)

    consumer = reader(stream, props, held, tmp_path, prefetch=5)
    start(consumer)
    time.sleep(0.5)
    with AMQPProducer(stream, props, confirm=True) as producer:
        for n in range(50):
            producer(n)
    # the handler holds the first message: the reader is 50 behind, and
    # sees past its prefetch of 5 by looking at the stream's last chunk
    assert wait_for(lambda: (consumer.status()['lag'] or 0) >= 45, 5), \
        consumer.status()
    text = metrics.render(metrics.collect())
    lines = [line for line in text.splitlines()
             if line.startswith('zamqp_stream_lag{') and stream in line]
    assert len(lines) == 1 and 'reader="r1"' in lines[0]
    assert int(float(lines[0].rsplit(' ', 1)[1])) >= 45
    release.set()
    assert wait_for(lambda: len(got.items) == 50, 10)
    assert wait_for(lambda: consumer.status()['lag'] == 0, 5)
    assert consumer.status()['position'] == 49


def test_a_broker_internal_error_is_recoverable():
    """541 INTERNAL_ERROR: what a cluster node answers for a moment
    after a stream's leader died; the reader tries again."""
    from amqp import exceptions as amqp_errors
    from zamqp.connection import explain
    error = explain(amqp_errors.InternalError('', method_sig=(60, 20)),
                    broker_props(), 'basic_consume')
    assert error.recoverable


def _queue_type(name):
    out = subprocess.run(['rabbitmqctl', 'list_queues', 'name', 'type',
                          '--formatter', 'json'], capture_output=True,
                         text=True, timeout=60).stdout
    return {row['name']: row['type'] for row in json.loads(out)}.get(name)


needs_rabbitmqctl = pytest.mark.skipif(
    brokers.missing(), reason='RabbitMQ is not installed on this machine '
    '(ZAMQP_TEST_URL points elsewhere); CI requires it')


@needs_rabbitmqctl
@pytest.mark.parametrize('first', ['stream', 'classic'])
def test_the_dead_letter_queue_is_replicated_for_streams_and_shared(
        stream, props, start, tmp_path, admin, first):
    """A stream reader declares its dead-letter queue a quorum queue
    (it lives on when a node is down); whoever declares it first chooses
    its type, and the other consumers of the exchange use it as it is."""
    dead = props.exchange + '.dead'
    readers = [lambda: reader(stream, props, Received(), tmp_path),
               lambda: AMQPConsumer(stream + '.work', props, print,
                                    shared=True)]
    if first == 'classic':
        readers.reverse()
    try:
        for make in readers:
            consumer = make()
            start(consumer)
            assert consumer.status()['state'] == 'consuming', \
                consumer.status()
        assert _queue_type(dead) == ('quorum' if first == 'stream'
                                     else 'classic')
    finally:
        admin.delete_queue(stream + '.work')
