"""Passwords and secrets never show: not in reprs, URLs, exception
messages or log records (zamqp's and py-amqp's, at DEBUG), in the
failures a wrong setting causes against the real broker."""
import logging
import traceback

import pytest

from zamqp import AMQPConnection
from zamqp import AMQPConsumer
from zamqp import AMQPProducer
from zamqp import AMQPProps
from zamqp import AMQPThread
from zamqp import ConfigurationError
from zamqp import ConnectionFailed
from zamqp.serializers import Decoder
from zamqp.zope.spec import ConsumerSpec
from zamqp.testhelpers import broker_props
from zamqp.testhelpers import free_port
from zamqp.testhelpers import unique
from zamqp.testhelpers import wait_for

PASSWORD = 'Pa55-word-never-shown'
SECRET = 'signing-secret-never-shown'
OLD_SECRET = 'older-secret-never-shown'
SENSITIVE = (PASSWORD, SECRET, OLD_SECRET)


def assert_hidden(*texts):
    for text in texts:
        for word in SENSITIVE:
            assert word not in text, f'{word!r} shown in {text!r}'


def everything_logged(caplog):
    lines = []
    for record in caplog.records:
        lines.append(record.getMessage())
        if record.exc_info:
            lines.extend(traceback.format_exception(*record.exc_info))
    return '\n'.join(lines)


def failure_text(exc):
    return '\n'.join([str(exc), repr(exc)] + traceback.format_exception(
        type(exc), exc, exc.__traceback__))


@pytest.fixture
def wrong(make_props):
    """Props of the real broker with a wrong password and secrets."""
    return make_props(password=PASSWORD, secret=SECRET,
                      accepted_secrets=[OLD_SECRET], connect_timeout=3)


def test_reprs_and_urls():
    props = AMQPProps(url=f'amqp://shop:{PASSWORD}@h1:5672,h2:5673/v',
                      secret=SECRET, accepted_secrets=[OLD_SECRET])
    consumer = AMQPConsumer('q', props, print)
    objects = [props, props.replace(exchange='x'), props.signer,
               AMQPConnection('q', props), AMQPProducer('q', props),
               consumer, AMQPThread(consumer), consumer.decoder,
               ConsumerSpec('c', props, 'q'), Decoder.for_props(props)]
    assert_hidden(props.url(), props.url('h2:5673'),
                  *(repr(o) for o in objects), *(str(o) for o in objects))
    assert props.url() == 'amqp://shop@h1:5672,h2:5673/v'


def test_refused_login(wrong, caplog):
    caplog.set_level(logging.DEBUG)
    with pytest.raises(ConnectionFailed) as info:
        with AMQPConnection('q', wrong) as conn:
            conn.channel
    assert 'refused the login' in str(info.value)
    assert_hidden(failure_text(info.value), everything_logged(caplog))


def test_refused_login_of_a_producer_and_a_consumer(wrong, caplog):
    caplog.set_level(logging.DEBUG)
    with pytest.raises(ConnectionFailed) as info:
        AMQPProducer('q', wrong)('x')
    consumer = AMQPConsumer(unique('q'), wrong, print)
    thread = AMQPThread(consumer)
    with pytest.raises(ConnectionFailed) as stopped:
        thread.start()
    thread.stop()
    assert 'refused the login' in everything_logged(caplog)
    assert_hidden(failure_text(info.value), failure_text(stopped.value),
                  everything_logged(caplog))


def test_broker_down(caplog):
    caplog.set_level(logging.DEBUG)
    props = AMQPProps(host='127.0.0.1', port=free_port(), password=PASSWORD,
                      secret=SECRET, connect_timeout=1)
    with pytest.raises(ConnectionFailed) as info:
        AMQPProducer('q', props)('x')
    consumer = AMQPConsumer('q', props, print)
    consumer.min_backoff = 0.05
    thread = AMQPThread(consumer)
    thread.start()
    assert wait_for(lambda: 'retrying' in everything_logged(caplog))
    thread.stop()
    assert_hidden(failure_text(info.value), everything_logged(caplog))


def test_a_working_connection_logs_no_secret(make_props, caplog, start):
    caplog.set_level(logging.DEBUG)
    props = make_props(secret=SECRET, accepted_secrets=[OLD_SECRET])
    got = []
    start(AMQPConsumer(unique('q'), props, got.append))
    with AMQPProducer('q', props) as producer:
        producer('hello')
    assert wait_for(lambda: got == ['hello'])
    assert_hidden(everything_logged(caplog))


@pytest.mark.parametrize('kw', [
    dict(url=f'amqp://u:{PASSWORD}@host:99999/'),
    dict(url=f'amqp://u:{PASSWORD}@host/?heartbeat=x'),
    dict(url=f'amqp://u:{PASSWORD}@host/?bogus=1'),
    dict(url=f'amqp://u:{PASSWORD}@a:1,b:x/'),
    dict(url=f'http://u:{PASSWORD}@host/'),
    dict(url=f'amqp://u:{PASSWORD[:4]}/{PASSWORD[5:]}@host/'),
    dict(password=PASSWORD, type='nope'),
    dict(password=PASSWORD, heartbeat=-1),
    dict(secret=SECRET[:10]),
    dict(secret=SECRET, accepted_secrets=[OLD_SECRET[:5]]),
])
def test_configuration_errors(kw):
    with pytest.raises(ConfigurationError) as info:
        AMQPProps(**kw)
    assert_hidden(failure_text(info.value))
    for part in (PASSWORD[:4], PASSWORD[5:], SECRET[:10], OLD_SECRET[:5]):
        assert part not in str(info.value)


def test_password_with_an_unquoted_slash_is_an_error():
    """``amqp://u:ab/cd@host/`` would make ``cd@host`` the virtual host
    and print part of the password in every URL."""
    with pytest.raises(ConfigurationError, match='quote'):
        AMQPProps(url='amqp://u:ab/cd@host/')
    props = AMQPProps(url='amqp://u:ab%2Fcd@host/')
    assert props.password == 'ab/cd' and 'ab' not in props.url()


def test_broker_props_helper_sees_no_leak():
    """The test suite's own helper: the URL it prints has no password."""
    props = broker_props(password=PASSWORD)
    assert_hidden(repr(props), props.url())
