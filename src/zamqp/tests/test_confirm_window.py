"""ConfirmWindow without a broker: tags, multiple acks, nacks, returns,
lost channels, deadlines, and that every failure is raised or reported."""
import logging

import amqp
import pytest

from zamqp import window as w
from zamqp.producer import AMQPProducer
from zamqp.props import AMQPProps


def record(n, deadline=100.0, waited=False):
    return w.Record(amqp.Message(b'', message_id=f'm{n}'), 'k', deadline,
                    waited)


@pytest.fixture
def reports():
    return []


@pytest.fixture
def win(reports):
    return w.ConfirmWindow(5, lambda records, state: reports.append(
        (state, [r.message_id for r in records])))


def send(win, *numbers, **kw):
    records = [record(n, **kw) for n in numbers]
    for r in records:
        win.sent(r)
    return records


def test_multiple_ack_pops_from_the_left(win, reports):
    records = send(win, 1, 2, 3, 4)
    win.ack(3, multiple=True)
    assert [r.state for r in records] == ['ack', 'ack', 'ack', None]
    assert len(win) == 1 and win.first_tag == 4
    win.ack(4)
    assert len(win) == 0 and reports == []


def test_single_ack_out_of_order_compacts_once_the_left_settles(win):
    records = send(win, 1, 2, 3)
    win.ack(2)
    assert len(win) == 3 and records[1].state == 'ack'
    win.ack(1)
    assert len(win) == 1 and win.first_tag == 3


def test_full_window(win):
    send(win, 1, 2, 3, 4)
    assert not win.full
    send(win, 5)
    assert win.full
    win.ack(1)
    assert not win.full


def test_nack_of_an_unwaited_message_is_reported(win, reports):
    send(win, 1, 2, 3)
    win.nack(2, multiple=True)
    assert reports == [('nack', ['m1', 'm2'])]


def test_nack_of_a_waited_message_is_left_to_its_waiter(win, reports):
    (r,) = send(win, 1, waited=True)
    win.nack(1)
    assert r.state == 'nack' and reports == []


def test_returned_then_acked_counts_as_returned(win, reports):
    send(win, 1)
    win.returned_message('m1', '312 NO_ROUTE')
    win.ack(1)
    assert reports == [('returned', ['m1'])]


def test_lost_channel_resends_unconfirmed_in_order(win):
    records = send(win, 1, 2, 3, 4)
    win.ack(1, multiple=True)
    assert win.channel_lost() == 3
    assert win.next_tag == 1 and not win.pending
    resent = []
    while (r := win.next_orphan(0.0)) is not None:
        win.orphans.popleft()
        win.sent(r)
        resent.append(r)
    assert resent == records[1:]
    assert [r.sends for r in resent] == [2, 2, 2]
    win.ack(3, multiple=True)      # tags of the new channel
    assert len(win) == 0


def test_lost_twice_keeps_order(win):
    records = send(win, 1, 2, 3)
    win.channel_lost()
    r = win.next_orphan(0.0)
    win.orphans.popleft()
    win.sent(r)                    # m1 resent, then lost again
    win.channel_lost()
    assert list(win.orphans) == records


def test_deadline_expires_and_reports(win, reports):
    send(win, 1, 2, deadline=10.0)
    send(win, 3, deadline=20.0)
    win.expire(15.0)
    assert reports == [('timeout', ['m1', 'm2'])]
    assert len(win) == 1
    win.ack(3, multiple=True)      # late acks of expired tags are ignored
    assert len(win) == 0 and len(reports) == 1


def test_expired_orphans_are_not_resent(win, reports):
    send(win, 1, deadline=10.0)
    send(win, 2, deadline=30.0)
    win.channel_lost()
    assert win.next_orphan(20.0).message_id == 'm2'
    assert reports == [('timeout', ['m1'])]


def test_late_ack_after_a_waiter_gave_up_changes_nothing(win, reports):
    (r,) = send(win, 1, waited=True)
    win.give_up([r])
    win.ack(1)
    assert r.state == 'timeout' and reports == []


def test_window_must_hold_a_message():
    with pytest.raises(ValueError):
        w.ConfirmWindow(0)


def test_producer_logs_what_failed_with_its_ids(caplog):
    producer = AMQPProducer('q', AMQPProps(exchange='x'), window=10)
    producer.window.sent(record(1, deadline=1.0))
    producer.window.sent(record(2, deadline=1.0))
    with caplog.at_level(logging.ERROR, 'zamqp'):
        producer.window.expire(2.0)
    (line,) = [r.getMessage() for r in caplog.records]
    assert 'm1, m2' in line and 'not confirmed within' in line


def test_unknown_confirm_value_is_refused():
    with pytest.raises(ValueError):
        AMQPProducer('q', AMQPProps(), confirm='yes')
