"""Publish on commit: transactional producers and AMQPEvents against the
real broker, with the ``transaction`` package's thread-local manager."""
import logging
import sys
import threading
import time

import pytest
import transaction
import zope.event

from zamqp import AMQPConsumer
from zamqp import AMQPEvent
from zamqp import AMQPEventCallback
from zamqp import AMQPProducer
from zamqp import AMQPProps
from zamqp import transactional
from zamqp.exceptions import PublishFailed
from zamqp.testhelpers import wait_for
from zamqp.tests.eventtypes import Ping
from zamqp.testhelpers import free_port

#: How long we watch for a message that must not arrive.
QUIET = 0.3


@pytest.fixture
def tm():
    """transaction.manager in explicit mode; no transaction before or
    after."""
    manager = transaction.manager
    explicit = manager.explicit
    manager.explicit = False
    manager.abort()     # implicit: aborts whatever is there, or nothing
    manager.explicit = True
    yield manager
    manager.explicit = False
    manager.abort()     # implicit: aborts whatever is there, or nothing
    manager.explicit = explicit


@pytest.fixture
def inbox(props, start):
    """What a running consumer of queue 'q' on ``props`` received."""
    got = []
    start(AMQPConsumer('q', props, got.append))
    return got


@pytest.fixture
def producer(props):
    with AMQPProducer('q', props, transactional=True) as producer:
        yield producer


def quiet(received, count=0):
    """True when nothing beyond the first ``count`` arrives for a while."""
    time.sleep(QUIET)
    return len(received) == count


def zamqp_errors(caplog):
    return [r for r in caplog.records
            if r.name.split('.')[0] == 'zamqp' and r.levelno >= logging.ERROR]


def test_message_goes_only_after_commit(tm, inbox, producer):
    tm.begin()
    message_id = producer('after commit')
    assert isinstance(message_id, str) and message_id
    assert quiet(inbox)
    tm.commit()
    assert wait_for(lambda: inbox == ['after commit'])


def test_abort_drops_the_message(tm, inbox, producer, caplog):
    caplog.set_level(logging.DEBUG, logger='zamqp')
    tm.begin()
    message_id = producer('never')
    tm.abort()
    assert quiet(inbox)
    assert any(message_id in r.getMessage() and 'aborted' in r.getMessage()
               for r in caplog.records if r.levelno == logging.DEBUG)
    # the producer works on: the next transaction's message goes
    tm.begin()
    producer('next')
    tm.commit()
    assert wait_for(lambda: inbox == ['next'])


def test_without_a_transaction_the_message_goes_at_once(tm, inbox,
                                                        producer):
    assert transactional.active_transaction() is None
    producer('now')
    assert wait_for(lambda: inbox == ['now'])


def test_implicit_mode_holds_messages_once_get_made_a_transaction(
        tm, inbox, producer):
    tm.explicit = False
    producer('at once')     # nobody called get(): no transaction
    assert wait_for(lambda: inbox == ['at once'])
    assert transactional.active_transaction() is None   # still none
    tm.get()
    producer('held')
    assert quiet(inbox, 1)
    tm.commit()
    assert wait_for(lambda: inbox == ['at once', 'held'])


def test_several_messages_go_in_order_with_one_hook(tm, inbox, producer):
    txn = tm.begin()
    hooks_before = list(txn.getAfterCommitHooks())
    ids = [producer(n) for n in range(10)]
    assert len(list(txn.getAfterCommitHooks())) == len(hooks_before) + 1
    assert [m.properties['message_id']
            for _, m, _ in transactional.pending()] == ids
    assert quiet(inbox)
    tm.commit()
    assert wait_for(lambda: len(inbox) == 10)
    assert inbox == list(range(10))


def test_messages_of_several_producers_are_published_in_call_order(
        tm, inbox, producer, props, monkeypatch):
    # The broker keeps the order of one connection only, so watch the
    # publishing itself.
    other = AMQPProducer('q', props, transactional=True, serializer='json')
    published = []
    for p in producer, other:
        def publish_committed(msg, key, p=p, real=p.publish_committed):
            published.append(msg.properties['message_id'])
            real(msg, key)
        monkeypatch.setattr(p, 'publish_committed', publish_committed)
    tm.begin()
    ids = [(producer if n % 2 else other)(n) for n in range(10)]
    tm.commit()
    other.close()
    assert published == ids
    assert wait_for(lambda: sorted(inbox) == list(range(10)))


def test_failed_publish_after_commit_is_logged_and_does_not_raise(
        tm, inbox, producer, caplog):
    nowhere = AMQPProps(host='127.0.0.1', port=free_port(),
                        exchange='zamqp.test.nowhere', connect_timeout=2)
    lost = AMQPProducer('q', nowhere, transactional=True)
    tm.begin()
    lost_id = lost('lost')
    producer('still sent')
    tm.commit()     # does not raise
    assert wait_for(lambda: inbox == ['still sent'])
    # the default producer keeps the message for a later connection ...
    assert zamqp_errors(caplog) == []
    assert [r.message_id for r in lost.window.unsettled()] == [lost_id]
    # ... until it is closed: then it is logged with its id
    with pytest.raises(PublishFailed):
        lost.close(timeout=0.5)
    errors = zamqp_errors(caplog)
    assert len(errors) == 1
    text = errors[0].getMessage()
    assert lost_id in text and "'zamqp.test.nowhere'" in text
    assert 'refused' in text


def test_failed_publish_after_commit_of_a_confirming_producer_is_logged(
        tm, inbox, producer, caplog):
    nowhere = AMQPProps(host='127.0.0.1', port=free_port(),
                        exchange='zamqp.test.nowhere', connect_timeout=2,
                        timeout=1)
    lost = AMQPProducer('q', nowhere, transactional=True, confirm=False)
    tm.begin()
    lost_id = lost('lost')
    producer('still sent')
    tm.commit()     # does not raise
    assert wait_for(lambda: inbox == ['still sent'])
    errors = zamqp_errors(caplog)
    assert len(errors) == 1
    text = errors[0].getMessage()
    assert lost_id in text and 'refused' in text


def test_serialization_error_raises_at_the_call(tm, inbox, props):
    producer = AMQPProducer('q', props, transactional=True,
                            serializer='json')
    tm.begin()
    with pytest.raises(TypeError):
        producer(object())
    assert transactional.pending() == []
    producer('fine')
    tm.commit()
    assert wait_for(lambda: inbox == ['fine'])
    producer.close()


def test_not_transactional_producer_publishes_inside_a_transaction(
        tm, inbox, props):
    with AMQPProducer('q', props) as producer:      # transactional=False
        tm.begin()
        producer('now')
        assert wait_for(lambda: inbox == ['now'])
        tm.abort()
    assert quiet(inbox, 1)
    assert inbox == ['now']


def test_amqp_event_in_a_transaction_goes_on_commit(tm, props, start,
                                                    pings):
    start(AMQPConsumer('ev', props, AMQPEventCallback(), allow=[Ping]))
    tm.begin()
    event = AMQPEvent('ev', props, Ping('on commit'))
    zope.event.notify(event)
    assert event.publish() is False         # published (queued) once
    assert len(transactional.pending()) == 1
    assert quiet(pings)
    tm.commit()
    assert wait_for(lambda: pings == [Ping('on commit')])


def test_amqp_event_in_an_aborted_transaction_never_goes(tm, props, start,
                                                         pings):
    start(AMQPConsumer('ev', props, AMQPEventCallback(), allow=[Ping]))
    tm.begin()
    assert AMQPEvent('ev', props, Ping('aborted')).publish() is True
    tm.abort()
    zope.event.notify(AMQPEvent('ev', props, Ping('outside')))
    assert wait_for(lambda: pings == [Ping('outside')])
    assert quiet(pings, 1)


def test_a_transaction_holds_only_its_own_threads_messages(tm, inbox,
                                                           producer):
    held, finish, done = (threading.Event() for _ in range(3))

    def other_thread():
        manager = transaction.manager   # this thread's own manager
        manager.begin()
        producer('from the transaction')
        held.set()
        finish.wait(5)
        manager.commit()
        done.set()

    thread = threading.Thread(target=other_thread)
    thread.start()
    try:
        assert held.wait(5)
        assert transactional.active_transaction() is None
        producer('from outside')
        assert wait_for(lambda: inbox == ['from outside'])
        assert quiet(inbox, 1)
    finally:
        finish.set()
        thread.join(5)
    assert done.is_set()
    assert wait_for(lambda: inbox == ['from outside',
                                      'from the transaction'])


def test_savepoint_rollback_drops_what_came_after_it(tm, inbox, producer):
    txn = tm.begin()
    producer(1)
    savepoint = txn.savepoint()
    producer(2)
    savepoint.rollback()
    producer(3)
    tm.commit()
    assert wait_for(lambda: len(inbox) == 2)
    assert quiet(inbox, 2)
    assert inbox == [1, 3]


def test_rolling_back_a_savepoint_from_before_the_first_message(
        tm, inbox, producer):
    txn = tm.begin()
    savepoint = txn.savepoint()
    producer('dropped')
    savepoint.rollback()
    producer('kept')
    inner = txn.savepoint()
    producer('dropped too')
    inner.rollback()
    tm.commit()
    assert wait_for(lambda: inbox == ['kept'])
    assert quiet(inbox, 1)


class DataManager:
    """A data manager that may publish or fail while committing."""

    transaction_manager = transaction.manager

    def __init__(self, key, vote=None):
        self.key = key
        self.vote = vote

    def abort(self, txn):
        pass

    tpc_begin = commit = tpc_finish = tpc_abort = abort

    def tpc_vote(self, txn):
        if self.vote is not None:
            self.vote()

    def sortKey(self):
        return self.key


def fail():
    raise RuntimeError('vote failed')


def test_failed_commit_drops_the_messages(tm, inbox, producer):
    txn = tm.begin()
    producer('never')
    txn.join(DataManager('zamqp.a-failing-vote', vote=fail))
    with pytest.raises(RuntimeError, match='vote failed'):
        tm.commit()
    tm.abort()
    assert quiet(inbox)


def test_message_published_while_committing_waits_for_the_outcome(
        tm, inbox, producer):
    txn = tm.begin()
    txn.join(DataManager('a', vote=lambda: producer('while committing')))
    tm.commit()
    assert wait_for(lambda: inbox == ['while committing'])
    # and is dropped when the commit then fails
    txn = tm.begin()
    txn.join(DataManager('a', vote=lambda: producer('never')))
    txn.join(DataManager('b', vote=fail))
    with pytest.raises(RuntimeError, match='vote failed'):
        tm.commit()
    tm.abort()
    assert quiet(inbox, 1)


def test_doomed_transaction_drops_the_messages(tm, inbox, producer):
    tm.begin()
    tm.doom()
    producer('doomed')
    with pytest.raises(transaction.interfaces.DoomedTransaction):
        tm.commit()
    tm.abort()
    assert quiet(inbox)


def test_message_from_a_before_commit_hook_waits_for_the_commit(
        tm, inbox, producer):
    txn = tm.begin()
    txn.addBeforeCommitHook(lambda: producer('from the hook'))
    producer('first')
    tm.commit()
    assert wait_for(lambda: inbox == ['first', 'from the hook'])


def test_message_after_the_commit_goes_at_once(tm, inbox, producer):
    txn = tm.begin()
    producer('queued')
    # runs after zamqp's hook, while the committed transaction is current
    txn.addAfterCommitHook(lambda ok: producer('from an after-commit hook'))
    tm.commit()
    assert wait_for(lambda: inbox == ['queued', 'from an after-commit hook'])


def test_without_the_transaction_package_messages_go_at_once(
        tm, inbox, producer, monkeypatch):
    tm.begin()
    monkeypatch.setitem(sys.modules, 'transaction', None)
    assert transactional.active_transaction() is None
    producer('at once')
    assert wait_for(lambda: inbox == ['at once'])


def test_unreachable_broker_costs_one_timeout_per_commit(tm, caplog):
    import socket
    import time
    silent = socket.socket()        # accepts TCP, never speaks AMQP
    silent.bind(('127.0.0.1', 0))
    silent.listen(8)
    try:
        props = AMQPProps(host='127.0.0.1', port=silent.getsockname()[1],
                          exchange='zamqp.test.silent', connect_timeout=1,
                          timeout=1)
        lost = AMQPProducer('q', props, transactional=True)
        tm.begin()
        ids = [lost(n) for n in range(3)]
        began = time.monotonic()
        tm.commit()
        took = time.monotonic() - began
    finally:
        silent.close()
    # one connection attempt (connect_timeout, 1 s), however many
    # messages the commit holds; they wait in the window, unsent, and
    # closing the producer logs them
    assert took < 2.0, f'commit waited {took:.1f} s'
    assert zamqp_errors(caplog) == []
    assert len(lost.window) == 3
    with pytest.raises(PublishFailed):
        lost.close(timeout=0.5)
    errors = [r.getMessage() for r in zamqp_errors(caplog)]
    assert len(errors) == 1
    assert all(i in errors[0] for i in ids)


@pytest.fixture
def beginning(props):
    """A producer that begins a transaction when there is none, as the
    producers of <zamqp:producer> do (zconsole scripts)."""
    with AMQPProducer('q', props, transactional=True) as producer:
        producer.begins_transaction = True
        yield producer


def test_producer_that_begins_holds_until_commit(tm, inbox, beginning):
    tm.explicit = False
    assert transactional.active_transaction() is None
    beginning('held')
    assert transactional.active_transaction() is not None
    assert quiet(inbox)
    tm.commit()
    assert wait_for(lambda: inbox == ['held'])


def test_producer_that_begins_drops_on_abort(tm, inbox, beginning):
    tm.explicit = False
    beginning('never')
    tm.abort()
    assert quiet(inbox)
    beginning('next')
    tm.commit()
    assert wait_for(lambda: inbox == ['next'])


def test_explicit_manager_without_begin_still_publishes_at_once(
        tm, inbox, beginning):
    beginning('now')        # tm is explicit: nothing to begin implicitly
    assert wait_for(lambda: inbox == ['now'])


def test_never_committed_messages_are_logged_at_exit(tm, inbox, beginning,
                                                     caplog):
    tm.explicit = False
    message_id = beginning('forgotten')
    transactional.never_committed()
    warnings = [r.getMessage() for r in caplog.records
                if r.levelno == logging.WARNING]
    assert any('never committed' in text and message_id in text
               for text in warnings), warnings
    tm.abort()
    caplog.clear()
    transactional.never_committed()
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]
