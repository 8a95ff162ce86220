"""Hostile content headers and bodies through the real broker to running
consumers (issue 9, items 2 and 8).

Each case of zamqp.tests.hostileframes is published on a plain socket,
hand-built frame by frame. RabbitMQ refuses some of them (it closes the
publisher's channel or connection: recorded in BROKER_REFUSES); every one
it passes on must leave every consumer alive, be refused by all of them
(dead-lettered with x-zamqp-error by the acknowledging one), and the
next good message must reach every callback.
"""
import pytest

from zamqp.consumer import AMQPConsumer
from zamqp.producer import AMQPProducer
from zamqp.props import AMQPProps
from zamqp.testhelpers import broker_url
from zamqp.testhelpers import unique
from zamqp.testhelpers import wait_for
from zamqp.tests import hostileframes as hf

#: What RabbitMQ 3.10 does not pass on, by case name (the start of the
#: reason it gives when it closes the publisher's channel or connection).
BROKER_REFUSES = {
    # RabbitMQ does not know the type letter 'U' (py-amqp reads it as a
    # signed 16-bit int), nor 'Z' or '?', and checks table lengths
    'header type U': 'connection closed: 541 INTERNAL_ERROR',
    'header array of every type': 'connection closed: 541 INTERNAL_ERROR',
    'unknown header type Z': 'connection closed: 541 INTERNAL_ERROR',
    'unknown type in a nested array':
        'connection closed: 541 INTERNAL_ERROR',
    'table length past the end': 'connection closed: 541 INTERNAL_ERROR',
    'flag continuation bit': 'connection closed: 541 INTERNAL_ERROR',
    # NaN and infinite floats in header tables
    'float NaN': 'connection closed: 541 INTERNAL_ERROR',
    'double infinity': 'connection closed: 541 INTERNAL_ERROR',
    'double NaN': 'connection closed: 541 INTERNAL_ERROR',
    # properties the broker itself checks
    'bad UTF-8 expiration': 'channel closed: 406 PRECONDITION_FAILED',
    'bad UTF-8 user_id': 'channel closed: 406 PRECONDITION_FAILED',
}


def publisher():
    props = AMQPProps(url=broker_url())
    host, _, port = props.address.partition(':')
    return hf.RawPublisher(host, int(port or 5672), props.user,
                           props.password, props.virtual_host)


class Inbox:
    def __init__(self):
        self.values = []

    def __call__(self, value):
        self.values.append(value)


@pytest.fixture
def consumers(make_props, start, admin):
    """Three running consumers of one fanout exchange: a broadcast one, a
    shared acknowledging one with a dead-letter exchange, a JSON-only
    one; and a producer of good messages."""
    props = make_props()
    shared = unique('zamqp.test.hostile')
    made = {
        'broadcast': AMQPConsumer(unique('zamqp.test.hostile'), props,
                                  Inbox()),
        'shared': AMQPConsumer(shared, props, Inbox(), shared=True),
        'json': AMQPConsumer(unique('zamqp.test.hostile'), props, Inbox(),
                             accept='json'),
    }
    threads = {name: start(c) for name, c in made.items()}
    producer = AMQPProducer('good', props, serializer='json')
    yield props, made, threads, producer
    producer.close()
    for thread in threads.values():
        thread.stop()
    admin.delete_queue(shared)


def alive_and_delivered(made, threads, producer, n):
    """Send good message ``n``; whether every consumer got it, alive."""
    producer({'good': n})
    return wait_for(lambda: all(
        {'good': n} in c.callback.values for c in made.values()),
        timeout=10) and all(t.is_alive() for t in threads.values())


def test_hostile_corpus_through_the_broker(consumers, admin):
    props, made, threads, producer = consumers
    raw = publisher()
    verdicts, passed = {}, []
    try:
        assert alive_and_delivered(made, threads, producer, -1)
        for n, case in enumerate(hf.CASES):
            verdict = raw.publish(props.exchange, case.routing_key,
                                  case.properties, case.body)
            verdicts[case.name] = verdict
            if verdict == 'passed':
                passed.append(case)
            assert alive_and_delivered(made, threads, producer, n), \
                f'after {case.name!r} ({verdict})'
        for name, consumer in made.items():     # read the fast way
            fast = consumer.session.fast
            assert fast is not None and fast.fast > len(hf.CASES), name
    finally:
        raw.close()
    refused = {name: v for name, v in verdicts.items() if v != 'passed'}
    assert sorted(refused) == sorted(BROKER_REFUSES), refused
    for name, reason in BROKER_REFUSES.items():
        assert refused[name].startswith(f'refused: {reason}'), refused[name]
    # no hostile message reached a callback: each is refused (none has a
    # content type), the shared consumer dead-letters it
    for consumer in made.values():
        assert all(set(v) == {'good'} for v in consumer.callback.values)
    dead = props.exchange + '.dead'
    assert wait_for(lambda: admin.queue_depth(dead) >= len(passed))
    letters = admin.take(dead)
    assert len(letters) == len(passed)
    for case, letter in zip(passed, letters):
        error = letter.headers['x-zamqp-error']
        if case.fault:
            assert 'cannot decode' in error, (case.name, error)
        else:
            assert 'content type None' in error, (case.name, error)
        assert letter.body == case.body or not case.body


def test_oversized_body_is_dead_lettered_empty(make_props, start, admin):
    props = make_props()
    shared = unique('zamqp.test.hostile')
    inbox = Inbox()
    thread = start(AMQPConsumer(shared, props, inbox, shared=True,
                                max_size=100000))
    producer = AMQPProducer('x', props, serializer='json')
    raw = publisher()
    try:
        assert raw.publish(props.exchange, 'x', hf.properties(
            content_type='application/json', message_id='big'),
            b'"' + b'x' * 1000000 + b'"') == 'passed'
        producer({'after': 'big'})
        assert wait_for(lambda: inbox.values == [{'after': 'big'}],
                        timeout=10)
        assert thread.is_alive()
        dead = props.exchange + '.dead'
        assert wait_for(lambda: admin.queue_depth(dead) == 1)
        letter, = admin.take(dead)
        assert not letter.body          # py-amqp gives '' for no body
        # the properties were decoded: the dead letter keeps them
        assert letter.properties['message_id'] == 'big'
        assert letter.properties['content_type'] == 'application/json'
        assert 'the body has 1000002 bytes, more than max_size=100000' in \
            letter.headers['x-zamqp-error']
    finally:
        raw.close()
        producer.close()
        thread.stop()
        admin.delete_queue(shared)
