"""Signed messages: producers sign, consumers refuse before decoding every
message whose signature is missing or wrong; key rotation; rules for
signed messages only. The broker tests run against the real RabbitMQ."""
import datetime
import decimal
import logging
import os
import pickle
import time

import amqp
import hypothesis
import hypothesis.strategies
import pytest

from zamqp import AMQPConsumer
from zamqp import AMQPProducer
from zamqp import AMQPProps
from zamqp import ConfigurationError
from zamqp import MessageRefused
from zamqp import signing
from zamqp.serializers import Decoder
from zamqp.testhelpers import unique
from zamqp.testhelpers import wait_for
from zamqp.tests.eventtypes import Ping

SECRET = 'correct-horse-battery-staple-1'
OTHER = 'another-long-shared-secret-22'
NEXT = 'the-next-secret-after-rotation'
PICKLE = 'application/x-python-serialize'


def signed(signer, body, **properties):
    """An amqp.Message as a zamqp producer signs it."""
    properties.setdefault('content_type', PICKLE)
    properties.setdefault('message_id', 'm-1')
    properties.setdefault('timestamp', int(time.time()))
    headers = properties.setdefault('application_headers', {})
    headers[signing.HEADER] = signer.sign(body, properties)
    return amqp.Message(body, **properties)


# the Signer alone

def test_sign_and_verify():
    signer = signing.Signer(SECRET)
    message = signed(signer, pickle.dumps({'a': 1}))
    signer.verify(message.body, message.properties)
    value = message.headers[signing.HEADER]
    version, kid, mac = value.split(':')
    assert (version, kid, len(mac)) == ('v1', signer.key_id, 64)


def test_key_id_names_the_secret_without_showing_it():
    kid = signing.key_id(SECRET)
    assert kid == signing.key_id(SECRET.encode())
    assert kid != signing.key_id(OTHER)
    assert kid not in SECRET and len(kid) == 8
    signer = signing.Signer(SECRET, [OTHER])
    assert SECRET not in repr(signer) and OTHER not in repr(signer)
    assert signer.key_ids == (signing.key_id(SECRET), signing.key_id(OTHER))


@pytest.mark.parametrize('change', [
    ('body', b'changed'),
    ('content_type', 'application/json'),
    ('content_encoding', 'gzip'),
    ('type', 'other'),
    ('message_id', 'm-2'),
    ('timestamp', 12345),
    ('header', ('user', 'mallory')),
    ('header', ('new', 1)),
])
def test_a_changed_message_is_refused(change):
    signer = signing.Signer(SECRET)
    message = signed(signer, b'body', application_headers={'user': 'bob'})
    what, value = change
    body, properties = message.body, dict(message.properties)
    properties['application_headers'] = dict(message.headers)
    if what == 'body':
        body = value
    elif what == 'header':
        properties['application_headers'][value[0]] = value[1]
    else:
        properties[what] = value
    with pytest.raises(MessageRefused, match='does not match'):
        signer.verify(body, properties)


def test_x_headers_are_not_signed():
    """Brokers and consumers add x- headers on the way (retries, deaths);
    the signature stays valid."""
    signer = signing.Signer(SECRET)
    message = signed(signer, b'body')
    message.headers['x-zamqp-retries'] = 2
    message.headers['x-death'] = [{'count': 1, 'reason': 'rejected'}]
    signer.verify(message.body, message.properties)


def test_header_values_are_canonical_across_the_amqp_round_trip():
    """What py-amqp gives back (bytes as str, datetimes without
    microseconds) verifies like what was signed."""
    signer = signing.Signer(SECRET)
    sent = {'s': 'héllo', 'b': b'abc', 'raw': b'\xff\x00', 'i': 2 ** 40,
            't': True, 'f': 1.5, 'n': None, 'd': decimal.Decimal('1.25'),
            'dt': datetime.datetime(2026, 1, 2, 3, 4, 5, 678),
            'l': [1, 'a', [2]], 'm': {'z': 1, 'a': {'k': b'v'}}}
    message = signed(signer, b'body', application_headers=dict(sent))
    received = dict(message.properties)
    received['application_headers'] = dict(
        message.headers, b='abc', dt=datetime.datetime(2026, 1, 2, 3, 4, 5),
        m={'z': 1, 'a': {'k': 'v'}})
    signer.verify(message.body, received)


@pytest.mark.parametrize('value', [
    'v1:abc', 'v2:12345678:' + '0' * 64, 'v1:12345678:' + 'g' * 64,
    'v1:12345678:' + '0' * 63, 12, b'\xff' * 80, 'v1:12345678:' + 'é' * 64,
])
def test_malformed_signatures_are_refused(value):
    signer = signing.Signer(SECRET)
    message = signed(signer, b'body')
    message.headers[signing.HEADER] = value
    with pytest.raises(MessageRefused, match='malformed'):
        signer.verify(message.body, message.properties)


def test_unknown_key_id_names_the_accepted_ones():
    message = signed(signing.Signer(OTHER), b'body')
    signer = signing.Signer(SECRET)
    with pytest.raises(MessageRefused) as info:
        signer.verify(message.body, message.properties)
    text = str(info.value)
    assert signing.key_id(OTHER) in text and signer.key_id in text
    assert SECRET not in text and OTHER not in text


def test_rotation_accepts_every_accepted_secret():
    old, new = signing.Signer(SECRET), signing.Signer(NEXT)
    during = signing.Signer(NEXT, [SECRET])
    for sender in (old, new):
        message = signed(sender, b'body')
        during.verify(message.body, message.properties)
    after = signing.Signer(NEXT)
    message = signed(old, b'body')
    with pytest.raises(MessageRefused, match='not one of the accepted'):
        after.verify(message.body, message.properties)


def test_max_age_refuses_old_and_undated_messages():
    signer = signing.Signer(SECRET, max_age=60)
    fresh = signed(signer, b'body')
    signer.verify(fresh.body, fresh.properties)
    old = signed(signer, b'body', timestamp=int(time.time()) - 3600)
    with pytest.raises(MessageRefused, match='signature_max_age'):
        signer.verify(old.body, old.properties)
    undated = signed(signer, b'body')
    del undated.properties['timestamp']
    undated.headers[signing.HEADER] = signer.sign(undated.body,
                                                  undated.properties)
    with pytest.raises(MessageRefused, match='no timestamp'):
        signer.verify(undated.body, undated.properties)


@pytest.mark.parametrize('secret', ['pw-Xq9z', ' ' * 40, 12345])
def test_weak_secrets_are_configuration_errors(secret):
    with pytest.raises(ConfigurationError) as info:
        AMQPProps(secret=secret)
    assert 'secret' in str(info.value)
    if isinstance(secret, str) and secret.strip():
        assert secret not in str(info.value)


def test_secret_from_the_environment(monkeypatch):
    monkeypatch.setenv('ZAMQP_TEST_SECRET', f'{NEXT} {SECRET}')
    props = AMQPProps(secret_env='ZAMQP_TEST_SECRET')
    assert props.secret == NEXT
    assert props.accepted_secrets == (SECRET,)
    assert props.signer.key_ids == (signing.key_id(NEXT),
                                    signing.key_id(SECRET))
    monkeypatch.delenv('ZAMQP_TEST_SECRET')
    with pytest.raises(ConfigurationError, match='ZAMQP_TEST_SECRET'):
        AMQPProps(secret_env='ZAMQP_TEST_SECRET')
    with pytest.raises(ConfigurationError, match='not both'):
        AMQPProps(secret=SECRET, secret_env='ZAMQP_TEST_SECRET')
    with pytest.raises(ConfigurationError, match='needs a secret'):
        AMQPProps(accepted_secrets=[SECRET])


def test_secrets_stay_out_of_reprs_and_urls():
    props = AMQPProps(secret=SECRET, accepted_secrets=[OTHER],
                      password='hunter2-password')
    for text in (repr(props), props.url(), repr(props.signer),
                 repr(props.replace(exchange='x'))):
        assert SECRET not in text and OTHER not in text
        assert 'hunter2' not in text
    assert props.replace(exchange='x').signer.key_ids == props.signer.key_ids


# the decoder: the signature is checked before any decoding

class Unpicklable:
    """Unpickling it records the fact: it must never happen for refused
    messages."""

    unpickled = []

    def __init__(self):
        self.state = 'set'

    def __setstate__(self, state):
        Unpicklable.unpickled.append(state)


def test_refused_before_decoding():
    Unpicklable.unpickled.clear()
    body = pickle.dumps(Unpicklable())
    rules = [f'{__name__}.Unpicklable']
    decoder = Decoder.for_props(AMQPProps(secret=SECRET, allow=rules))
    forged = signed(signing.Signer(OTHER), body)
    unsigned = amqp.Message(body, content_type=PICKLE)
    for message in (forged, unsigned):
        with pytest.raises(MessageRefused):
            decoder(message)
    assert Unpicklable.unpickled == []
    decoder(signed(signing.Signer(SECRET), body))
    assert len(Unpicklable.unpickled) == 1


def test_signed_allow_applies_to_verified_messages_only():
    body = pickle.dumps(Ping('hello'))
    props = AMQPProps(secret=SECRET, accept_unsigned=True,
                      signed_allow=['zamqp.tests.eventtypes.*'])
    decoder = Decoder.for_props(props)
    assert decoder(signed(props.signer, body)).name == 'hello'
    with pytest.raises(MessageRefused, match='eventtypes'):
        decoder(amqp.Message(body, content_type=PICKLE))
    assert decoder(amqp.Message(pickle.dumps([1]),
                                content_type=PICKLE)) == [1]
    valid = signed(props.signer, body)
    changed = amqp.Message(body.replace(b'hello', b'HELLO'),
                           **valid.properties)
    with pytest.raises(MessageRefused, match='does not match'):
        decoder(changed)


def test_without_a_secret_signed_allow_never_applies():
    body = pickle.dumps(Ping('hello'))
    props = AMQPProps(signed_allow=['zamqp.tests.eventtypes.*'])
    message = signed(signing.Signer(SECRET), body)
    with pytest.raises(MessageRefused, match='eventtypes'):
        Decoder.for_props(props)(message)


# through the broker

@pytest.fixture
def work(admin):
    name = unique('signed')
    yield name
    admin.delete_queue(name)


def test_signed_messages_reach_the_handler_forged_ones_never(
        make_props, admin, start, work, caplog):
    props = make_props(secret=SECRET)
    dead = f'{props.exchange}.dead'
    got = []
    start(AMQPConsumer(work, props, got.append, shared=True))
    producer = AMQPProducer(work, props)
    producer({'n': 1})
    forger = AMQPProducer(work, props.replace(secret=OTHER))
    forger({'n': 'forged'})
    plain = AMQPProducer(work, props.replace(secret=None))
    plain({'n': 'unsigned'})
    valid = producer.message({'n': 'tampered'})
    tampered = amqp.Message(pickle.dumps({'n': 'evil'}), **valid.properties)
    with caplog.at_level(logging.ERROR, 'zamqp'):
        admin.channel.basic_publish(tampered, props.exchange, work)
        producer({'n': 2})
        assert wait_for(lambda: len(got) == 2)
        assert wait_for(lambda: admin.queue_depth(dead) == 3)
    assert got == [{'n': 1}, {'n': 2}]
    errors = sorted(m.headers['x-zamqp-error'] for m in
                    admin.take(dead))
    assert 'not signed' in errors[0] or 'not signed' in ' '.join(errors)
    assert sum('does not match' in e for e in errors) == 1
    assert sum('not one of the accepted' in e for e in errors) == 1
    logged = '\n'.join(r.getMessage() for r in caplog.records)
    assert logged.count('refused message') == 3
    assert SECRET not in logged and OTHER not in logged
    assert 'evil' not in logged and 'forged' not in logged
    for producer_ in (producer, forger, plain):
        producer_.close()


def test_retried_messages_keep_their_signature(make_props, start, work):
    props = make_props(secret=SECRET)
    calls = []

    def flaky(body):
        calls.append(body)
        if len(calls) == 1:
            raise RuntimeError('first time fails')

    start(AMQPConsumer(work, props, flaky, shared=True))
    with AMQPProducer(work, props) as producer:
        producer('again')
    assert wait_for(lambda: len(calls) == 2)
    assert calls == ['again', 'again']


def test_rotation_through_the_broker(make_props, start, work, admin):
    props = make_props(secret=NEXT, accepted_secrets=[SECRET])
    got = []
    start(AMQPConsumer(work, props, got.append, shared=True))
    for secret in (SECRET, NEXT):
        with AMQPProducer(work, props.replace(secret=secret,
                                              accepted_secrets=())) as p:
            p(secret[:3])
    assert wait_for(lambda: sorted(got) == ['cor', 'the'])


def test_accept_unsigned_decodes_unsigned_with_the_strict_rules(
        make_props, start, work, admin):
    props = make_props(secret=SECRET, accept_unsigned=True,
                       signed_allow=['zamqp.tests.eventtypes.*'])
    dead = f'{props.exchange}.dead'
    got = []
    start(AMQPConsumer(work, props, got.append, shared=True))
    with AMQPProducer(work, props.replace(secret=None)) as plain:
        plain('plain text')
        plain(Ping('unsigned ping'))
    with AMQPProducer(work, props) as signer:
        signer(Ping('signed ping'))
    assert wait_for(lambda: len(got) == 2)
    assert wait_for(lambda: admin.queue_depth(dead) == 1)
    assert got[0] == 'plain text' and got[1].name == 'signed ping'
    error = admin.take(dead)[0].headers['x-zamqp-error']
    assert 'eventtypes' in error


def test_producer_headers_are_sent_and_signed(make_props, start, work):
    props = make_props(secret=SECRET)
    got = []
    start(AMQPConsumer(work, props, lambda body, message: got.append(
        message.headers), shared=True, pass_message=True))
    with AMQPProducer(work, props) as producer:
        producer('x', headers={'tenant': 'a', 'x-trace': 't1'})
    assert wait_for(lambda: got)
    assert got[0]['tenant'] == 'a' and got[0]['x-trace'] == 't1'
    assert got[0][signing.HEADER].startswith(f'v1:{props.signer.key_id}:')


def test_senders_cannot_fake_log_lines(make_props, admin, start, work,
                                       caplog):
    """Message ids and reasons come from the sender: a newline in them
    must not start a log line of its own."""
    props = make_props(secret=SECRET)
    start(AMQPConsumer(work, props, print, shared=True))
    fake = 'm1\nCRITICAL zamqp: all is well'
    body = b'\x80\x04\x8c\x0bos\nsystem\x8c\x06system\x93.'
    with caplog.at_level(logging.ERROR, 'zamqp'):
        admin.channel.basic_publish(amqp.Message(
            body, content_type=PICKLE, message_id=fake * 5),
            props.exchange, work)
        assert wait_for(lambda: any('refused message' in r.getMessage()
                                    for r in caplog.records))
    line, = [r.getMessage() for r in caplog.records
             if 'refused message' in r.getMessage()]
    assert '\n' not in line and '\\n' in line
    assert len(line) < 1500


@pytest.mark.parametrize('headers', [{'f': float('nan')},
                                     {'m': {'l': [1, float('inf')]}}])
def test_headers_rabbitmq_would_refuse_are_an_error(make_props, headers):
    producer = AMQPProducer('q', make_props())
    with pytest.raises(ValueError, match='NaN and infinite'):
        producer('x', headers=headers)
    producer('x', headers={'f': 1.5})     # the connection is fine
    producer.close()


def test_headers_nested_beyond_the_recursion_limit_are_refused():
    from zamqp import signing
    value = 'x'
    for _ in range(5000):
        value = {'a': value}
    with pytest.raises(MessageRefused) as info:
        signing.signed_fields({'application_headers': {'h': value}})
    assert 'cannot sign or verify' in str(info.value)


def _parse_by_the_rules(value):
    """What a signature header must be: 'v1:<8 chars>:<64 hex digits>'."""
    parts = value.split(':')
    if len(parts) != 3 or parts[0] != 'v1' or len(parts[1]) != 8 \
            or len(parts[2]) != 64 or not set(parts[2]) <= set(
                '0123456789abcdef'):
        return 'refused'
    return tuple(parts)


@hypothesis.settings(max_examples=2000, deadline=None, database=None,
                     derandomize=bool(os.environ.get('CI')))
@hypothesis.given(hypothesis.strategies.one_of(
    hypothesis.strategies.text('v1:0123456789abcdefABxyz', max_size=90),
    hypothesis.strategies.tuples(
        hypothesis.strategies.text('0123456789abcdef:x', min_size=7,
                                   max_size=9),
        hypothesis.strategies.text('0123456789abcdefA:', min_size=63,
                                   max_size=65)).map(
        lambda kv: f'v1:{kv[0]}:{kv[1]}')))
def test_signature_header_parsed_by_its_rules(value):
    """The quick form check of the header and the general one agree."""
    try:
        got = tuple(signing._parse(value))
    except MessageRefused:
        got = 'refused'
    assert got == _parse_by_the_rules(value)
