"""ConfirmWindow without a broker: tags, multiple acks, nacks, returns,
lost channels, deadlines, and that every failure is raised or reported."""
import logging

import amqp
import pytest

from zamqp import window as w
from zamqp.producer import AMQPProducer
from zamqp.producer import id_summary
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


def test_unwaited_records_never_expire(win, reports):
    records = send(win, 1, 2, deadline=10.0)
    win.channel_lost()
    assert win.next_orphan(1e9) is records[0]
    assert reports == [] and len(win) == 2


def test_stalled_when_the_oldest_is_due(win):
    r1, r2 = record(1), record(2)
    win.sent(r1, due=10.0)
    win.sent(r2, due=20.0)
    assert not win.stalled(9.0) and win.stalled(10.0)
    win.ack(1)
    assert not win.stalled(15.0) and win.stalled(20.0)
    win.ack(2)
    assert not win.stalled(1e9)


def test_a_settled_head_is_no_stall(win):
    r1, r2 = record(1, waited=True), record(2)
    win.sent(r1, due=1.0)
    win.sent(r2, due=50.0)
    win.give_up([r1])
    assert not win.stalled(10.0)
    win.ack(2)                     # tag 2 is still r2's
    assert r2.state == 'ack' and len(win) == 0


def test_queued_records_go_after_the_orphans(win):
    records = send(win, 1, 2)
    win.channel_lost()
    late = record(3)
    win.queue(late)
    assert list(win.orphans) == records + [late]
    assert len(win) == 3


def test_given_up_records_leave_the_window(win, reports):
    records = send(win, 1, 2, 3, waited=True)
    win.channel_lost()
    win.give_up(records)
    assert len(win) == 0 and reports == []


def test_late_ack_after_a_waiter_gave_up_changes_nothing(win, reports):
    (r,) = send(win, 1, waited=True)
    win.give_up([r])
    win.ack(1)
    assert r.state == 'timeout' and reports == []


def test_window_must_hold_a_message():
    with pytest.raises(ValueError):
        w.ConfirmWindow(0)


def test_producer_logs_a_nack_with_count_and_ids(caplog):
    producer = AMQPProducer('q', AMQPProps(exchange='x'), window=1000)
    for n in range(1, 101):
        producer.window.sent(record(n))
    with caplog.at_level(logging.DEBUG, 'zamqp'):
        producer.window.nack(100, multiple=True)
    error, debug = [r.getMessage() for r in caplog.records]
    assert error.startswith('100 messages: m1, m2, m3 ... m98, m99, m100 ')
    assert 'nacked by the broker' in error and len(error) < 200
    assert debug.count(', ') == 99


def test_id_summary():
    assert id_summary(['a', 'b']) == '2 message(s): a, b'
    assert id_summary([str(n) for n in range(10)]) == \
        '10 messages: 0, 1, 2 ... 7, 8, 9'


def test_unknown_confirm_value_is_refused():
    with pytest.raises(ValueError):
        AMQPProducer('q', AMQPProps(), confirm='yes')
