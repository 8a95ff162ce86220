"""Supervised consumers: zamqp's own errors never end or wedge them."""
import pytest

from zamqp import AMQPConsumer
from zamqp import AMQPProducer
from zamqp import deadletter
from zamqp.exceptions import MessageRefused
from zamqp import session as session_module
from zamqp.testhelpers import unique
from zamqp.testhelpers import wait_for


@pytest.fixture
def producer(props):
    producer = AMQPProducer('q', props)
    yield producer
    producer.close()


def dead_letters(admin, props):
    return admin.take(props.exchange + '.dead')


def test_decoder_crash_dead_letters_the_message_and_goes_on(
        props, start, producer, admin, caplog, monkeypatch):
    got = []
    consumer = AMQPConsumer(unique('crash'), props, got.append, shared=True)
    decode = consumer.decoder.decode

    def broken(body, properties, allow=None):
        value = decode(body, properties, allow)
        if value == 'poison':
            raise TypeError('a bug in zamqp')   # not a MessageRefused
        return value

    monkeypatch.setattr(consumer.decoder, 'decode', broken)
    thread = start(consumer)
    for body in ('before', 'poison', 'after'):
        producer(body, routing_key=consumer.queue)
    try:
        assert wait_for(lambda: got == ['before', 'after'])
        assert thread.is_alive() and thread.worker.is_alive()
        dead = []
        assert wait_for(lambda: dead.extend(dead_letters(admin, props))
                        or dead)
        assert dead[0].headers[deadletter.ERROR] == \
            'TypeError: a bug in zamqp'
        status = consumer.status()
        assert status['crashes'] == 1 and status['handled'] == 2
        assert status['dead_lettered'] == 1
        assert status['state'] == 'consuming'
        crashes = [r for r in caplog.records
                   if 'unexpected error on message' in r.getMessage()]
        assert len(crashes) == 1 and crashes[0].exc_info
        assert 'the consumer goes on' in crashes[0].getMessage()
    finally:
        admin.delete_queue(consumer.queue)


def test_session_crash_reconnects_and_nothing_is_lost(
        props, start, producer, admin, caplog, monkeypatch):
    got = []
    consumer = AMQPConsumer(unique('session'), props, got.append,
                            shared=True)
    thread = start(consumer)
    settle = session_module.Session.settle
    crashes = []

    def flaky(self):
        if not crashes and self.worker.results:
            crashes.append(1)
            raise KeyError('a bug in the session loop')
        settle(self)

    monkeypatch.setattr(session_module.Session, 'settle', flaky)
    try:
        for n in range(20):
            producer(n, routing_key=consumer.queue)
        # the first results were dropped with the connection: those
        # messages are redelivered (at least once), none is lost
        assert wait_for(lambda: set(got) == set(range(20)), timeout=10)
        assert wait_for(lambda: consumer.status()['reconnects'] == 1)
        assert thread.is_alive()
        status = consumer.status()
        assert status['crashes'] == 1
        assert status['state'] == 'consuming'
        logged = [r for r in caplog.records
                  if 'a bug in zamqp' in r.getMessage()]
        assert len(logged) == 1 and logged[0].exc_info
        assert 'reconnecting' in logged[0].getMessage()
        assert wait_for(lambda: admin.queue_depth(consumer.queue) == 0)
    finally:
        admin.delete_queue(consumer.queue)


def test_a_dead_worker_is_replaced(props, start, producer, caplog):
    got = []
    consumer = AMQPConsumer(unique('worker'), props, got.append)
    thread = start(consumer)
    first = thread.worker
    first.inbox.put(None)           # ends it, as a crash would
    assert wait_for(lambda: thread.worker is not first
                    and thread.worker.is_alive(), timeout=5)
    assert wait_for(lambda: consumer.status()['reconnects'] == 1)
    assert consumer.status()['crashes'] == 1
    producer('after', routing_key=consumer.queue)
    assert wait_for(lambda: got == ['after'])
    assert thread.is_alive()
    assert any('worker thread ended unexpectedly' in r.getMessage()
               for r in caplog.records)


def test_handler_raising_system_exit_does_not_end_the_worker(
        props, start, producer):
    got = []

    def handler(body):
        if body == 'exit':
            raise SystemExit(3)
        got.append(body)

    consumer = AMQPConsumer(unique('exit'), props, handler)
    thread = start(consumer)
    for body in ('exit', 'after'):
        producer(body, routing_key=consumer.queue)
    assert wait_for(lambda: got == ['after'])
    assert thread.worker.is_alive()
    assert consumer.status()['failed'] == 1


def test_stopped_consumer_reports_stopped_and_is_not_alive(props, start):
    consumer = AMQPConsumer(unique('state'), props, print)
    thread = start(consumer)
    assert thread.is_alive() and consumer.status()['state'] == 'consuming'
    assert not consumer.stop_requested
    assert thread.stop()
    assert consumer.stop_requested and not thread.is_alive()
    assert consumer.status()['state'] == 'stopped'


def test_is_alive_is_false_once_the_consumer_failed(make_props):
    props = make_props(user='nobody', password='wrong')
    consumer = AMQPConsumer(unique('failed'), props, print)
    from zamqp import AMQPThread
    from zamqp import ConnectionFailed
    thread = AMQPThread(consumer)
    with pytest.raises(ConnectionFailed):
        thread.start()
    assert not thread.is_alive()
    status = consumer.status()
    assert status['state'] == 'failed'
    assert 'refused the login' in status['last_error']


def test_handler_outliving_stop_sees_its_message_given_back(
        props, producer, admin, caplog):
    import threading
    from zamqp import AMQPThread
    from zamqp.worker import current_delivery
    entered, release, seen = threading.Event(), threading.Event(), []

    def slow(body):
        entered.set()
        release.wait(5)
        seen.append(current_delivery().abandoned())
        raise RuntimeError('aborted: given back')

    consumer = AMQPConsumer(unique('slow'), props, slow, shared=True)
    thread = AMQPThread(consumer)
    thread.start()
    try:
        producer('slow', routing_key=consumer.queue)
        assert entered.wait(5)
        assert not thread.stop(timeout=0.5)     # the handler still runs
        release.set()
        assert wait_for(lambda: seen == [True])
        assert wait_for(lambda: not threading.Thread.is_alive(thread))
        assert consumer.status()['failed'] == 0
        assert consumer.status()['retried'] == 0
        logged = [r for r in caplog.records
                  if 'after the message was given back' in r.getMessage()]
        assert len(logged) == 1 and logged[0].levelname == 'WARNING'
        assert wait_for(lambda: admin.queue_depth(consumer.queue) == 1)
    finally:
        release.set()
        admin.delete_queue(consumer.queue)


def test_copies_of_a_message_with_headers_near_frame_max_fit(
        props, start, admin):
    import amqp
    calls = []

    def failing(body):
        calls.append(body)
        raise ValueError('x' * 2000)

    consumer = AMQPConsumer(unique('big'), props, failing, shared=True,
                            max_retries=1)
    start(consumer)
    headers = {f'h{n}': 'v' * 200 for n in range(600)}
    size = len(amqp.Message(b'', application_headers=headers)
               ._serialize_properties())
    headers['pad'] = 'p' * (131072 - deadletter.HEADER_OVERHEAD - size - 200)
    import pickle
    message = amqp.Message(pickle.dumps('big'), application_headers=headers,
                           content_type='application/x-python-serialize',
                           message_id='big-headers')
    admin.channel.basic_publish(message, props.exchange, consumer.queue)
    try:
        dead = []
        assert wait_for(lambda: dead.extend(dead_letters(admin, props))
                        or dead, timeout=10)
        assert calls == ['big', 'big']      # retried once, then dead
        letter = dead[0]
        assert letter.properties['message_id'] == 'big-headers'
        assert letter.headers[deadletter.HEADERS_DROPPED] is True
        assert letter.headers[deadletter.ERROR].startswith('ValueError: xxx')
        status = consumer.status()
        assert status['reconnects'] == 0 and status['state'] == 'consuming'
        assert (status['retried'], status['dead_lettered']) == (1, 1)
    finally:
        admin.delete_queue(consumer.queue)


def test_bodiless_message_with_a_content_encoding_is_dead_lettered(
        props, start, admin, producer):
    import amqp
    got = []
    consumer = AMQPConsumer(unique('bodiless'), props, got.append,
                            shared=True, accept='json')
    start(consumer)
    # py-amqp gives a bodiless message the body '', which its writer
    # would encode with the content encoding: the copy must not
    admin.channel.basic_publish(
        amqp.Message(b'', content_type='application/json',
                     content_encoding='gzip', message_id='empty'),
        props.exchange, consumer.queue)
    with AMQPProducer(consumer.queue, props, serializer='json') as json:
        json('after')
    try:
        assert wait_for(lambda: got == ['after'])
        dead = []
        assert wait_for(lambda: dead.extend(dead_letters(admin, props))
                        or dead)
        assert dead[0].properties['message_id'] == 'empty'
        # refused for its content encoding (not a charset), before the
        # body is looked at
        assert "content_encoding 'gzip' is not a charset" in \
            dead[0].headers[deadletter.ERROR]
        status = consumer.status()
        assert status['crashes'] == 0 and status['reconnects'] == 0
    finally:
        admin.delete_queue(consumer.queue)


def test_a_callback_refusing_a_message_dead_letters_it_without_retries(
        props, start, producer, admin):
    calls = []

    def callback(body):
        calls.append(body)
        if body == 'unwanted':
            raise MessageRefused('not for us: unknown event class')

    consumer = AMQPConsumer(unique('refusing'), props, callback,
                            shared=True, max_retries=3)
    start(consumer)
    for body in ('unwanted', 'after'):
        producer(body, routing_key=consumer.queue)
    try:
        assert wait_for(lambda: 'after' in calls)
        dead = []
        assert wait_for(lambda: dead.extend(dead_letters(admin, props))
                        or dead)
        assert calls.count('unwanted') == 1     # refused, never retried
        assert 'not for us' in dead[0].headers[deadletter.ERROR]
        status = consumer.status()
        assert status['refused'] == 1 and status['retried'] == 0
        assert status['dead_lettered'] == 1
    finally:
        admin.delete_queue(consumer.queue)
