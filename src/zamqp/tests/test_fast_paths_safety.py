"""The fast paths keep every safety check (issue 13).

Through RabbitMQ, to consumers whose session reads with
zamqp.fastconsume's BufferReader (checked: it delivered the messages),
from a producer that writes with zamqp.fastpublish: the malicious-pickle
corpus (every dangerous global in every encoding) runs no code and
reaches no callback, signatures are checked (unsigned, forged, altered
and replayed messages are refused), and max_size and max_depth apply.
Good messages sent between them still arrive, and the consumer lives.
"""
import pickle

import amqp
import pytest

from zamqp import AMQPConsumer
from zamqp import AMQPProducer
from zamqp import signing
from zamqp.testhelpers import unique
from zamqp.testhelpers import wait_for
from zamqp.tests.test_pickle_corpus import ENCODINGS
from zamqp.tests.test_pickle_corpus import attacks

PICKLE = 'application/x-python-serialize'
SECRET = 'a test secret of the fast paths, long enough'


class Inbox:
    def __init__(self):
        self.values = []

    def __call__(self, value):
        self.values.append(value)


def raw_publish(admin, exchange, body, **properties):
    properties.setdefault('content_type', PICKLE)
    admin.channel.basic_publish(amqp.Message(body, **properties), exchange,
                                '')


def fast_deliveries(consumer):
    session = consumer.session
    assert session is not None and session.fast is not None, \
        'the session does not read with the fast path'
    return session.fast.fast


@pytest.fixture
def shared(make_props, start, admin):
    """A shared acknowledging consumer (refusals are dead-lettered), a
    broadcast one (refusals are dropped) and a producer of good
    messages, on a fanout exchange. The broadcast consumer's session
    reads everything through the fast path; the shared one's reads
    through py-amqp too when it publishes a dead-letter copy (py-amqp's
    basic_publish drains the socket first)."""
    made = []

    def make(**kw):
        props = make_props(**{k: kw.pop(k) for k in ('secret',) if k in kw})
        queue = unique('zamqp.test.fastsafe')
        inbox, seen = Inbox(), Inbox()
        consumer = AMQPConsumer(queue, props, inbox, shared=True, **kw)
        broadcast = AMQPConsumer(unique('zamqp.test.fastsafe'), props,
                                 seen, **kw)
        threads = [start(consumer), start(broadcast)]
        producer = AMQPProducer('good', props, confirm=False)
        made.append((queue, producer))
        for one in (consumer, broadcast):
            assert wait_for(lambda: one.session is not None
                            and one.session.fast is not None)
        return Setup(props, consumer, broadcast, threads, inbox, seen,
                     producer)

    yield make
    for queue, producer in made:
        producer.close()
        admin.delete_queue(queue)


class Setup:
    def __init__(self, props, consumer, broadcast, threads, inbox, seen,
                 producer):
        self.props, self.consumer, self.broadcast = props, consumer, \
            broadcast
        self.threads, self.inbox, self.seen = threads, inbox, seen
        self.producer = producer

    def good_arrives(self, n):
        """Send good message ``n`` (another connection: it may overtake
        what the test published raw); whether both consumers got it and
        live."""
        self.producer({'good': n})
        return wait_for(lambda: {'good': n} in self.inbox.values
                        and {'good': n} in self.seen.values,
                        timeout=10) and \
            all(t.is_alive() for t in self.threads)

    def fast(self):
        return fast_deliveries(self.consumer), \
            fast_deliveries(self.broadcast)

    def only_good(self):
        return all(set(v) == {'good'}
                   for v in self.inbox.values + self.seen.values)

    def refused(self):
        return (self.consumer.status()['refused'],
                self.broadcast.status()['refused'])


def test_malicious_pickles_through_the_fast_paths(shared, admin, tmp_path):
    setup = shared()
    marker = tmp_path / 'marker'
    payloads = [encode(*attack)
                for name, attack in sorted(attacks(marker).items())
                for encoding, encode in sorted(ENCODINGS.items())]
    assert setup.good_arrives(-1)
    shared_before, before = setup.fast()
    for n, body in enumerate(payloads):
        raw_publish(admin, setup.props.exchange, body,
                    message_id=f'evil-{n}')
    dead = setup.props.exchange + '.dead'
    assert wait_for(lambda: admin.queue_depth(dead) >= len(payloads)
                    and setup.refused()[1] == len(payloads))
    assert setup.good_arrives(0)
    shared_after, after = setup.fast()
    assert after >= before + len(payloads) + 1     # and the good one
    assert shared_after > shared_before
    assert not marker.exists(), 'a pickle ran code'
    assert setup.only_good()
    letters = admin.take(dead)
    assert len(letters) == len(payloads)
    for letter in letters:
        error = letter.headers['x-zamqp-error']
        assert 'refused' in error or 'cannot decode' in error, error
    assert setup.refused() == (len(payloads), len(payloads))


def test_signatures_checked_on_the_fast_paths(shared, admin):
    setup = shared(secret=SECRET)
    assert setup.good_arrives(-1)
    good = setup.producer.message({'forged': 'no'})
    body = pickle.dumps({'evil': 1})
    headers = dict(good.properties['application_headers'])
    other = signing.Signer('another secret, also long enough')
    forged = dict(good.properties, application_headers={
        signing.HEADER: other.sign(body, good.properties)})
    cases = {
        'unsigned': dict(content_type=PICKLE),
        'altered body': dict(good.properties, application_headers=headers),
        'signed by another secret': forged,
        'malformed signature': dict(good.properties, application_headers={
            signing.HEADER: 'v1:deadbeef:xyz'}),
    }
    _, before = setup.fast()
    for properties in cases.values():
        raw_publish(admin, setup.props.exchange, body, **properties)
    assert wait_for(lambda: setup.refused() == (len(cases), len(cases)))
    assert setup.good_arrives(0)
    assert setup.fast()[1] >= before + len(cases) + 1   # + good one
    assert setup.only_good()


def test_limits_on_the_fast_paths(shared, admin):
    setup = shared(max_size=2000, max_depth=5)
    assert setup.good_arrives(-1)
    _, before = setup.fast()
    deep = []
    for _ in range(10):
        deep = [deep]
    raw_publish(admin, setup.props.exchange, pickle.dumps(deep))
    raw_publish(admin, setup.props.exchange, pickle.dumps('x' * 5000))
    assert wait_for(lambda: setup.refused() == (2, 2))
    assert setup.good_arrives(0)
    # the deep one came the fast way; the large one went to the frame
    # handler, which drops a body over max_size as it comes
    assert setup.fast()[1] >= before + 2     # and the good one
    assert setup.only_good()
