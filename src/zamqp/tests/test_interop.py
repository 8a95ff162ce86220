"""Interop with kombu (celery's messaging) and pika on the real broker.

Each direction: a kombu or pika producer and a zamqp consumer, a zamqp
producer and a kombu or pika consumer; JSON with the typed values
(datetime, date, time, Decimal, UUID, bytes), compression, content
types with parameters and without a content type.
"""
import datetime
import decimal
import json
import logging
import uuid

import pytest
import zope.event

kombu = pytest.importorskip('kombu')
pika = pytest.importorskip('pika')

from kombu.exceptions import ContentDisallowed     # noqa: E402

from zamqp import AMQPConsumer                     # noqa: E402
from zamqp import AMQPEvent                        # noqa: E402
from zamqp import AMQPEventCallback                # noqa: E402
from zamqp import AMQPProducer                     # noqa: E402
from zamqp.testhelpers import broker_url           # noqa: E402
from zamqp.testhelpers import unique               # noqa: E402
from zamqp.testhelpers import wait_for             # noqa: E402

VALUE = {
    'when': datetime.datetime(2024, 5, 1, 12, 30, 5, 123456,
                              tzinfo=datetime.timezone.utc),
    'naive': datetime.datetime(2024, 5, 1, 12, 30),
    'day': datetime.date(2024, 5, 1),
    'at': datetime.time(23, 59, 59, 250000),
    'price': decimal.Decimal('12.50'),
    'id': uuid.UUID('0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0'),
    'text': b'plain bytes',
    'raw': b'\xff\x00\x80',
    'plain': [1, 'two', None, True, 1.5, {'nested': 'dict'}],
}
COMPRESSIONS = [None, 'zlib', 'bz2', 'lzma']


@pytest.fixture
def kombu_connection():
    with kombu.Connection(broker_url(), connect_timeout=5) as connection:
        yield connection


@pytest.fixture
def queue_on(kombu_connection):
    """A durable queue of the test's own bound to an exchange; a kombu
    Queue bound to a channel. Deleted at teardown."""
    made = []

    def declare(props, key='q'):
        exchange_ready(props)
        queue = kombu.Queue(unique('zamqp.interop'), durable=True,
                            auto_delete=False)(kombu_connection.channel())
        queue.declare()
        queue.bind_to(exchange=props.exchange, routing_key=key)
        made.append(queue)
        return queue

    yield declare
    for queue in made:
        queue.delete()


def get(queue, accept=('json',), timeout=5.0):
    """The next kombu Message of ``queue`` (acknowledged)."""
    got = []
    assert wait_for(lambda: got.append(queue.get(
        no_ack=True, accept=list(accept))) or got[-1] is not None,
        timeout=timeout)
    return got[-1]


def exchange_ready(props):
    """Declare the test's exchange (as zamqp's producers do)."""
    producer = AMQPProducer('q', props, confirm=True)
    producer(None)          # no queue is bound yet: dropped
    producer.close()


def kombu_publish(connection, props, body, **kw):
    producer = connection.Producer()
    producer.publish(body, exchange=props.exchange, routing_key='q', **kw)


@pytest.fixture
def pika_channel():
    connection = pika.BlockingConnection(pika.URLParameters(broker_url()))
    yield connection.channel()
    connection.close()


# kombu -> zamqp

@pytest.mark.parametrize('compression', [None, 'zlib', 'gzip', 'bzip2',
                                         'lzma', 'xz'])
def test_kombu_json_to_zamqp(compression, props, start, kombu_connection):
    got = []
    start(AMQPConsumer('q', props, got.append, accept=['json']))
    kombu_publish(kombu_connection, props, VALUE, serializer='json',
                  compression=compression)
    assert wait_for(lambda: got)
    assert got == [VALUE]
    assert {k: type(v) for k, v in got[0].items()} == \
        {k: type(v) for k, v in VALUE.items()}


def test_kombu_content_type_parameters_to_zamqp(props, start,
                                                kombu_connection):
    got = []
    start(AMQPConsumer('q', props, got.append, accept=['json']))
    text = '{"name":"Zoë"}'
    kombu_publish(kombu_connection, props, text.encode('utf-8'),
                  content_type='Application/JSON; charset=utf-8',
                  content_encoding='utf-8')
    kombu_publish(kombu_connection, props, text.encode('latin-1'),
                  content_type='application/json; charset=iso-8859-1',
                  content_encoding='binary')
    kombu_publish(kombu_connection, props, text.encode('utf-16'),
                  content_type='application/json', content_encoding='utf-16')
    assert wait_for(lambda: len(got) == 3)
    assert got == [{'name': 'Zoë'}] * 3


def test_kombu_zip_bomb_is_dead_lettered(make_props, start, admin,
                                         kombu_connection, caplog):
    props = make_props()
    got = []
    name = unique('zamqp.interop')
    start(AMQPConsumer(name, props, got.append, shared=True,
                       routing_key='q', max_size=1024 * 1024))
    try:
        kombu_publish(kombu_connection, props, b'\0' * (64 * 1024 * 1024),
                      content_type='application/json',
                      content_encoding='binary', compression='zlib')
        kombu_publish(kombu_connection, props, [1], serializer='json',
                      compression='zlib')
        assert wait_for(lambda: got == [[1]])
        dead = props.exchange + '.dead'
        assert wait_for(lambda: admin.queue_depth(dead) == 1)
        message, = admin.take(dead)
        assert message.headers['compression'] == 'application/x-gzip'
        assert len(message.body) < 100 * 1024
        assert 'decompresses to more than max_size=1048576' in caplog.text
    finally:
        admin.delete_queue(name)


# zamqp -> kombu

@pytest.mark.parametrize('compression', COMPRESSIONS)
def test_zamqp_json_to_kombu(compression, props, queue_on):
    queue = queue_on(props)
    AMQPProducer('q', props, serializer='json', compression=compression,
                 confirm=True)(VALUE)
    message = get(queue)
    assert message.content_type == 'application/json'
    assert message.content_encoding == 'utf-8'
    assert message.headers.get('compression') == {
        None: None, 'zlib': 'application/x-gzip', 'bz2': 'application/x-bz2',
        'lzma': 'application/x-lzma'}[compression]
    assert message.decode() == VALUE


def test_zamqp_pickle_is_refused_by_a_json_only_kombu_consumer(
        props, queue_on):
    # celery's default accept_content is ['json']: this is its refusal
    queue = queue_on(props)
    AMQPProducer('q', props, confirm=True)({'pickled': True})
    message = get(queue, accept=['json'])
    assert message.content_type == 'application/x-python-serialize'
    assert message.content_encoding == 'binary'
    with pytest.raises(ContentDisallowed):
        message.decode()


def test_json_event_to_kombu_and_zamqp(props, start, queue_on):
    queue = queue_on(props, key='events')
    seen = []
    zope.event.subscribers.append(
        lambda event: isinstance(event, dict) and seen.append(event))
    start(AMQPConsumer('events', props, AMQPEventCallback(),
                       accept=['json']))
    event = AMQPEvent('events', props, VALUE, serializer='json')
    zope.event.notify(event)
    assert wait_for(lambda: seen)
    assert seen == [VALUE]
    assert get(queue).decode() == VALUE


def test_event_serializer_must_be_known(props):
    with pytest.raises(Exception, match="unknown serializer 'yaml'"):
        AMQPEvent('events', props, {}, serializer='yaml')


# pika -> zamqp

def pika_publish(channel, props, body, **properties):
    channel.basic_publish(props.exchange, 'q', body,
                          pika.BasicProperties(**properties))


def test_pika_json_with_charset_to_zamqp(props, start, pika_channel):
    got = []
    start(AMQPConsumer('q', props, got.append))
    pika_publish(pika_channel, props, json.dumps(
        {'n': 1, 'when': {'__type__': 'date', '__value__': '2024-05-01'}}
    ).encode(), content_type='application/json; charset=utf-8')
    assert wait_for(lambda: got)
    assert got == [{'n': 1, 'when': datetime.date(2024, 5, 1)}]


@pytest.mark.parametrize('untyped, expected', [
    ('json', [{'n': 2}, 'good']),
    ('bytes', [b'{"n":2}', 'good']),
    (None, ['good']),
])
def test_pika_without_content_type_to_zamqp(untyped, expected, props, start,
                                            pika_channel, caplog):
    got = []
    start(AMQPConsumer('q', props, got.append, untyped=untyped))
    pika_publish(pika_channel, props, b'{"n":2}', message_id='untyped')
    AMQPProducer('q', props)('good')
    assert wait_for(lambda: got[-1:] == ['good'])
    assert got == expected
    if untyped is None:
        refused = [r.getMessage() for r in caplog.records
                   if 'untyped' in r.getMessage()]
        assert refused and "untyped='refuse'" in refused[0]
        assert any(r.levelno >= logging.WARNING for r in caplog.records
                   if 'untyped' in r.getMessage())


def test_pika_unknown_charset_is_refused(props, start, pika_channel,
                                         caplog):
    got = []
    start(AMQPConsumer('q', props, got.append))
    pika_publish(pika_channel, props, b'{}',
                 content_type='application/json; charset=x-klingon')
    AMQPProducer('q', props)('good')
    assert wait_for(lambda: got == ['good'])
    assert "unknown charset 'x-klingon'" in caplog.text


# zamqp -> pika

@pytest.mark.parametrize('compression', [None, 'zlib'])
def test_zamqp_json_to_pika(compression, props, queue_on, pika_channel):
    import zlib
    queue = queue_on(props)
    AMQPProducer('q', props, serializer='json', compression=compression,
                 confirm=True)({'price': decimal.Decimal('1.5'), 'n': 1})
    got = []
    assert wait_for(lambda: got.append(
        pika_channel.basic_get(queue.name, auto_ack=True)) or got[-1][0])
    _, properties, body = got[-1]
    assert properties.content_type == 'application/json'
    assert properties.content_encoding == 'utf-8'
    if compression:
        assert properties.headers['compression'] == 'application/x-gzip'
        body = zlib.decompress(body)
    assert json.loads(body) == {
        'price': {'__type__': 'decimal', '__value__': '1.5'}, 'n': 1}


# zamqp -> a celery worker

def celery_task_message(args, kwargs):
    """The body of a celery task message (protocol 2)."""
    return [args, kwargs, {'callbacks': None, 'errbacks': None,
                           'chain': None, 'chord': None}]


def test_celery_worker_runs_json_and_discards_pickle(admin):
    celery = pytest.importorskip('celery')
    from celery.contrib.testing.worker import start_worker
    from zamqp.testhelpers import broker_props
    name = unique('zamqp.celery')
    app = celery.Celery('zamqp_interop', broker=broker_url())
    app.conf.update(task_default_queue=name, task_default_exchange=name,
                    task_default_routing_key=name,
                    task_default_exchange_type='direct',
                    worker_hijack_root_logger=False,
                    # no pidbox: its transient queue RabbitMQ 4 refuses
                    worker_enable_remote_control=False)
    assert tuple(app.conf.accept_content) == ('json',)   # celery's default
    done = []

    @app.task(name='zamqp_interop.add')
    def add(x, y, when=None):
        done.append((x + y, when))

    props = broker_props(exchange=name, type='direct')
    json_ = AMQPProducer(name, props, serializer='json', confirm=True)
    pickle_ = AMQPProducer(name, props, confirm=True)
    try:
        with start_worker(app, pool='solo', perform_ping_check=False,
                          loglevel='WARNING', shutdown_timeout=30):
            def task(producer, args, kwargs):
                producer(celery_task_message(args, kwargs), headers={
                    'task': 'zamqp_interop.add', 'id': str(uuid.uuid4()),
                    'lang': 'py'})
            task(json_, [2, 3], {'when': datetime.date(2024, 5, 1)})
            task(pickle_, [20, 30], {})
            task(json_, [4, 5], {})
            assert wait_for(lambda: len(done) == 2, timeout=10)
            assert done == [(5, datetime.date(2024, 5, 1)), (9, None)]
            assert admin.queue_depth(name) == 0    # the pickle discarded
    finally:
        json_.close()
        pickle_.close()
        admin.delete_queue(name)
        admin.delete_exchange(name)
