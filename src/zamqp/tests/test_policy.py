"""Retry/dead-letter verdicts, settlement and backoff, without a broker."""
import amqp
import pytest

from zamqp import deadletter
from zamqp.backoff import Backoff
from zamqp.backoff import broker_away
from zamqp.exceptions import ConnectionFailed
from zamqp.policy import Redeliveries
from zamqp.policy import RetryPolicy
from zamqp.policy import Verdict
from zamqp.settlement import Settlement
from zamqp.status import ConsumerStatus
from zamqp.status import State


def message(tag=1, headers=None, redelivered=False, message_id='m1',
            body=b'body', **properties):
    msg = amqp.Message(body, message_id=message_id,
                       application_headers=headers or {}, **properties)
    msg.delivery_info = {'delivery_tag': tag, 'redelivered': redelivered,
                         'routing_key': 'rk', 'exchange': 'ex'}
    return msg


class Channel:
    """Records what a Settlement asks of its channel."""

    def __init__(self):
        self.calls = []

    def basic_ack(self, tag, multiple=False):
        self.calls.append(('ack', tag, multiple))

    def basic_reject(self, tag, requeue):
        self.calls.append(('reject', tag, requeue))

    def basic_publish(self, msg, exchange, routing_key):
        self.calls.append(('publish', exchange, routing_key, msg))


# RetryPolicy

def test_failures_are_retried_up_to_max_retries_then_dead_lettered():
    policy = RetryPolicy(True, 2, 'dlx')
    assert policy.on_failure(message())[0] is Verdict.RETRY
    once = message(headers={deadletter.RETRIES: 1})
    assert policy.on_failure(once)[0] is Verdict.RETRY
    twice = message(headers={deadletter.RETRIES: 2})
    verdict, fate = policy.on_failure(twice)
    assert verdict is Verdict.DEAD
    assert fate == "dead-lettered to 'dlx' after 3 attempts"


def test_without_dead_letter_exchange_a_failure_is_dropped():
    assert RetryPolicy(True, 0, None).on_failure(message())[0] is \
        Verdict.DROP
    verdict, fate = RetryPolicy(False, 3, None).on_failure(message())
    assert verdict is Verdict.DROP and 'does not ack' in fate


def test_refused_messages_are_given_up_at_once():
    assert RetryPolicy(True, 3, 'dlx').on_refused()[0] is Verdict.DEAD
    assert RetryPolicy(True, 3, None).on_refused()[0] is Verdict.DROP


def test_quorum_delivery_count_is_not_a_failure_count():
    # a quorum queue raises it for prefetched messages returned unhandled
    policy = RetryPolicy(True, 2, 'dlx')
    assert policy.failures(message(headers={'x-delivery-count': 5})) == 0
    assert policy.on_failure(
        message(headers={'x-delivery-count': 2}))[0] is Verdict.RETRY


def test_bad_retry_headers_count_as_zero():
    for value in ('x', -5, None, 10 ** 40 * 1.0):
        assert deadletter.retries(message(headers={
            deadletter.RETRIES: value})) in (0, int(10 ** 40 * 1.0))
    assert deadletter.retries(message(headers={deadletter.RETRIES: 'x'})) \
        == 0


def test_messages_lost_mid_handling_too_often_are_exhausted():
    redeliveries = Redeliveries()
    policy = RetryPolicy(True, 1, 'dlx', redeliveries)
    msg = message(redelivered=True)
    assert policy.exhausted(msg) is None
    redeliveries.lost(msg, 'its handler outlived consumer_timeout')
    assert policy.exhausted(msg) is None        # one loss: once more
    assert policy.failures(msg) == 1
    redeliveries.lost(msg, 'its handler outlived consumer_timeout')
    assert 'lost mid-handling 2 times' in policy.exhausted(msg)
    assert 'consumer_timeout' in policy.exhausted(msg)
    # only redeliveries: a new message with the same id is handled
    assert policy.exhausted(message()) is None
    redeliveries.forget(msg)
    assert policy.exhausted(msg) is None


def test_redeliveries_are_bounded_and_keyed_by_id_and_fingerprint():
    redeliveries = Redeliveries(size=6)
    for n in range(5):
        redeliveries.lost(message(message_id=f'm{n}'), 'crash')
    assert len(redeliveries) == 5
    redeliveries.lost(message(message_id='m5'), 'crash')
    redeliveries.lost(message(message_id='m6'), 'crash')
    assert len(redeliveries) == 6
    assert redeliveries.count(message(message_id='m0')) == 0
    assert redeliveries.count(message(message_id='m6')) == 1
    # the broker changed its headers (x-delivery-count): same message id
    a, b = message(message_id='same'), message(message_id='same')
    a.zamqp_key, b.zamqp_key = 1, 2
    redeliveries.lost(a, 'timeout')
    assert redeliveries.count(b) == 1
    # no message id: the body, whatever the broker did to the header
    e, f = message(message_id=None), message(message_id=None)
    e.zamqp_key, f.zamqp_key = 1, 2
    redeliveries.lost(e, 'timeout')
    assert redeliveries.count(f) == 1
    assert redeliveries.count(message(message_id=None, body=b'other')) == 0
    # known only by its fingerprint (a crash while reading it)
    c = message(message_id=None, body=b'c')
    d = message(message_id=None, body=b'd')
    c.zamqp_key = d.zamqp_key = 7
    redeliveries.lost(c, 'crash')
    assert redeliveries.count(d) == 1 and redeliveries.reason(d) == 'crash'
    redeliveries.lost(d, 'crash')
    assert redeliveries.count(c) == 2
    redeliveries.forget(d)
    assert redeliveries.count(d) == 0
    assert redeliveries.count(c) == 1     # its own body's loss remains


# Settlement

def settlement(ack=True, dlx='dlx', frame_max=None):
    channel, status = Channel(), ConsumerStatus()
    return channel, status, Settlement(channel, 'q', 'q.own', ack, status,
                                       dlx, frame_max, batch=3)


def test_acks_are_batched_into_one_multiple_ack():
    channel, status, settle = settlement()
    for tag in (1, 2):
        settle.settle(Verdict.ACK, message(tag))
    assert channel.calls == [] and not settle.due(idle=False)
    settle.settle(Verdict.ACK, message(3))
    assert settle.due(idle=False)
    settle.flush()
    assert channel.calls == [('ack', 3, True)]
    settle.flush()
    assert channel.calls == [('ack', 3, True)]


def test_other_verdicts_flush_pending_acks_first_in_order():
    channel, status, settle = settlement()
    settle.settle(Verdict.ACK, message(1))
    settle.settle(Verdict.RETRY, message(2), ValueError('x'))
    settle.settle(Verdict.DEAD, message(3), ValueError('boom'))
    settle.settle(Verdict.DROP, message(4))
    kinds = [(c[0], c[1]) for c in channel.calls]
    assert kinds == [('ack', 1), ('publish', ''), ('ack', 2),
                     ('publish', 'dlx'), ('ack', 3), ('reject', 4)]
    retry = channel.calls[1][3]
    assert channel.calls[1][2] == 'q.own'
    assert retry.headers[deadletter.RETRIES] == 1
    dead = channel.calls[3][3]
    assert dead.headers[deadletter.ERROR] == 'ValueError: boom'
    assert dead.headers[deadletter.QUEUE] == 'q'
    assert channel.calls[5] == ('reject', 4, False)
    counts = status.snapshot()
    assert (counts['retried'], counts['dead_lettered'], counts['dropped']) \
        == (1, 1, 1)


def test_without_ack_only_copies_are_published():
    channel, status, settle = settlement(ack=False)
    settle.settle(Verdict.DEAD, message(1), ValueError('boom'))
    settle.settle(Verdict.DROP, message(2))
    assert [c[0] for c in channel.calls] == ['publish']


def test_copies_fit_in_the_frame():
    big = {f'h{n}': 'v' * 200 for n in range(600)}
    size = len(message(headers=big)._serialize_properties())
    big['pad'] = 'p' * (131072 - deadletter.HEADER_OVERHEAD - size - 100)
    msg = message(headers=big)
    assert deadletter.fits(msg, 131072)     # it was received ...
    assert not deadletter.fits(deadletter.dead_letter(msg, 'e' * 400, 'q'),
                               131072)  # ... its copy would not fit
    channel, status, settle = settlement(frame_max=131072)
    settle.settle(Verdict.DEAD, msg, ValueError('x' * 10000))
    dead = channel.calls[0][3]
    assert deadletter.fits(dead, 131072)
    assert dead.headers[deadletter.HEADERS_DROPPED] is True
    assert len(dead.headers[deadletter.ERROR]) == deadletter.MAX_ERROR
    assert dead.properties['message_id'] == 'm1'
    settle.settle(Verdict.RETRY, msg)
    retry = channel.calls[2][3]
    assert deadletter.fits(retry, 131072)
    assert retry.headers[deadletter.RETRIES] == 1
    small = deadletter.dead_letter(message(headers={'a': 1}), 'e', 'q',
                                   131072)
    assert small.headers['a'] == 1 and deadletter.HEADERS_DROPPED not in \
        small.headers


def test_copies_of_undecodable_messages_carry_only_zamqp_headers():
    msg = message()
    msg.properties = {}
    msg.zamqp_fault = 'cannot decode the content header'
    dead = deadletter.dead_letter(msg, msg.zamqp_fault, 'q', 131072)
    assert dead.body == b'body'
    assert set(dead.headers) == {deadletter.ERROR, deadletter.QUEUE,
                                 deadletter.ROUTING_KEY,
                                 deadletter.EXCHANGE}
    assert dead.headers[deadletter.ERROR] == \
        'cannot decode the content header'


# Backoff and status

def test_backoff_doubles_is_jittered_capped_and_resets():
    backoff = Backoff(first=1.0, cap=8.0, refused_cap=2.0)
    delays = [backoff.delay() for _ in range(6)]
    for delay, nominal in zip(delays, (1, 2, 4, 8, 8, 8)):
        assert nominal / 2 <= delay <= nominal
    assert backoff.delay(refused=True) <= 2.0
    backoff.reset()
    assert backoff.delay() <= 1.0
    with pytest.raises(ValueError):
        Backoff(first=0)


def _failed(cause):
    """A ConnectionFailed raised from ``cause``, as zamqp raises it."""
    try:
        try:
            raise cause
        except Exception as exc:
            raise ConnectionFailed(f'connect: failed: {exc}') from exc
    except ConnectionFailed as failed:
        return failed


@pytest.mark.parametrize('cause', [
    ConnectionRefusedError(111, 'Connection refused'),
    ConnectionResetError(104, 'Connection reset by peer'),
    ConnectionAbortedError(103, 'Software caused connection abort'),
    BrokenPipeError(32, 'Broken pipe'),
    OSError('Socket closed'),       # py-amqp: EOF in the handshake
    amqp.exceptions.ConnectionForced('shutdown', 320),
])
def test_a_broker_down_starting_or_stopping_is_away(cause):
    assert broker_away(cause)
    assert broker_away(_failed(cause))
    assert broker_away(ConnectionFailed('none of the brokers')) is False


@pytest.mark.parametrize('cause', [
    TimeoutError('timed out'),
    OSError('No route to host'),
    amqp.exceptions.AccessRefused('login refused', 403),
    amqp.exceptions.NotAllowed('vhost', 530),
    ValueError('Socket closed'),
])
def test_other_failures_are_not_away(cause):
    assert not broker_away(cause)
    assert not broker_away(_failed(cause))


def test_status_counts_and_states():
    status = ConsumerStatus()
    assert status.snapshot()['state'] == 'starting'
    status.count('handled', 3)
    status.enter(State.RECONNECTING, OSError('gone'))
    snap = status.snapshot()
    assert snap['handled'] == 3 and snap['state'] == 'reconnecting'
    assert snap['last_error'] == 'gone'
    status.enter(State.CONSUMING)
    assert status.snapshot()['last_error'] == 'gone'   # the last one


def test_a_copy_that_cannot_be_written_drops_the_message():
    class Refusing(Channel):
        def basic_publish(self, msg, exchange, routing_key):
            raise LookupError('unknown encoding: gzip')

    channel, status = Refusing(), ConsumerStatus()
    settle = Settlement(channel, 'q', 'q.own', True, status, 'dlx')
    settle.settle(Verdict.DEAD, message(1), ValueError('x'))
    settle.settle(Verdict.RETRY, message(2), ValueError('x'))
    assert channel.calls == [('reject', 1, False), ('reject', 2, False)]
    counts = status.snapshot()
    assert (counts['dropped'], counts['dead_lettered']) == (2, 0)


def test_a_lost_connection_while_copying_is_raised():
    class Lost(Channel):
        def basic_publish(self, msg, exchange, routing_key):
            raise ConnectionResetError('gone')

    settle = Settlement(Lost(), 'q', 'q.own', True, ConsumerStatus(), 'dlx')
    with pytest.raises(ConnectionResetError):
        settle.settle(Verdict.DEAD, message(1), ValueError('x'))


def test_copies_of_bodiless_messages_have_bytes_bodies():
    msg = message(body='', content_encoding='gzip')    # py-amqp's default
    for copy in (deadletter.dead_letter(msg, 'e', 'q'),
                 deadletter.retry_copy(msg)):
        assert copy.body == b''
        copy._serialize_properties()    # writable


# Explaining broker refusals

@pytest.mark.parametrize('operation', ['consume', 'basic_consume'])
def test_a_precondition_failed_outside_declarations_is_quoted(operation):
    from zamqp import AMQPProps
    from zamqp.connection import explain
    exc = amqp.exceptions.PreconditionFailed(
        'PRECONDITION_FAILED - unknown delivery tag 7', (60, 80), 406)
    failed = explain(exc, AMQPProps(url='amqp://u:secret@rabbit/'),
                     operation)
    text = str(failed)
    assert 'declaration' not in text and 'secret' not in text
    assert 'unknown delivery tag 7' in text and '406' in text
    assert failed.recoverable


def test_a_precondition_failed_declaring_names_the_declaration():
    from zamqp import AMQPProps
    from zamqp.connection import explain
    exc = amqp.exceptions.PreconditionFailed(
        "PRECONDITION_FAILED - inequivalent arg 'durable'", (50, 10), 406)
    failed = explain(exc, AMQPProps(), 'declare')
    assert 'refused the declaration' in str(failed)
    assert not failed.recoverable
