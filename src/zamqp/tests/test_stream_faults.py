"""Stream readers through broker restarts (a private node, stopped or
killed with kill -9 mid-stream): every confirmed message reaches every
reader, in order; each exactly once in Zope, at least once in plain
Python (duplicates counted and reported)."""
import threading
import time

import pytest
import transaction
from OFS.Application import Application
from persistent.list import PersistentList
from ZODB import DB
from ZODB.DemoStorage import DemoStorage

from zamqp import AMQPConsumer
from zamqp import AMQPProducer
from zamqp.testhelpers import unique
from zamqp.testhelpers import wait_for
from zamqp.tests import brokers
from zamqp.tests.brokers import report
from zamqp.tests.test_faults import Stream
from zamqp.tests.test_faults import private_props
from zamqp.zope.context import InZope
from zamqp.zope.delivery import Delivery
from zamqp.zope.offsets import TransactionalPosition
from zamqp.zope.offsets import ZODBOffsetStore

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    brokers.missing(), reason='RabbitMQ is not installed on this machine '
    '(ZAMQP_TEST_URL points elsewhere); CI requires it')]


class Offsets:
    """What a plain reader received: (offset, body), thread-safe."""

    def __init__(self):
        self.lock = threading.Lock()
        self.items = []

    def __call__(self, body, message):
        with self.lock:
            self.items.append((message.headers['x-stream-offset'], body))

    def bodies(self):
        with self.lock:
            return [body for _, body in self.items]


def database():
    """A ZODB with a Zope application that has ``notes``."""
    db = DB(DemoStorage())
    connection = db.open()
    app = Application()
    app.notes = PersistentList()
    connection.root()['Application'] = app
    transaction.commit()
    connection.close()
    return db


def notes(db):
    connection = db.open()
    try:
        return list(connection.root()['Application'].notes)
    finally:
        transaction.abort()
        connection.close()


def note(event):
    event.site.notes.append(event.body)


def note_offset(event):
    event.site.notes.append(
        (event.body, event.message.headers['x-stream-offset']))


def zope_reader(stream, props, db, name, handler=note):
    """A stream consumer as zamqp.zope.spec makes it: ``handler`` in a
    ZODB transaction, the position committed with it."""
    store = ZODBOffsetStore(db)
    delivery = Delivery(name, handler, in_context=InZope(
        db, position=TransactionalPosition(store, stream, name)))
    return AMQPConsumer(stream, props, delivery, stream=True, reader=name,
                        offsets=store, pass_message=True)


@pytest.mark.parametrize('how', ['stop', 'kill'])
def test_every_reader_gets_every_confirmed_message_across_a_restart(
        broker, threads, tmp_path, how):
    exchange, stream = unique(), unique('zamqp.faults.stream')
    props = private_props(broker.address, exchange)
    plain = [Offsets(), Offsets()]
    for n, got in enumerate(plain):
        threads(AMQPConsumer(stream, props, got, stream=True,
                             reader=f'plain{n}', offsets=str(tmp_path),
                             pass_message=True))
    db = database()
    zope = zope_reader(stream, props, db, 'instance1')
    threads(zope)
    producer = AMQPProducer(stream, props, confirm=True, mandatory=True)
    publisher = Stream(producer, 2000, pause=0.002)
    publisher.start()
    publisher.wait_sent(600)
    began = time.monotonic()
    if how == 'kill':
        broker.kill()
        broker.start()
    else:
        broker.restart()
    down = time.monotonic() - began
    publisher.join(90)
    producer.close()
    sent = publisher.sent
    assert len(sent) == 2000, f'only {len(sent)} confirmed'
    for got in plain:
        assert wait_for(lambda: set(sent) <= set(got.bodies()), 30), \
            f'missing {sorted(set(sent) - set(got.bodies()))[:10]}'
    assert wait_for(lambda: set(sent) <= set(notes(db)), 30), \
        f'zope missing {sorted(set(sent) - set(notes(db)))[:10]}: ' \
        f'{zope.status()}'
    time.sleep(1.0)     # anything that would come twice, comes now
    applied = notes(db)
    assert len(applied) == len(set(applied)), 'applied twice in Zope'
    assert [b for b in applied if b in set(sent)] == sent   # in order
    duplicates = []
    for got in plain:
        offsets = [offset for offset, _ in got.items]
        first = sorted(set(offsets), key=offsets.index)
        assert first == sorted(first), 'offsets out of order'
        duplicates.append(len(offsets) - len(set(offsets)))
    status = zope.status()
    report(f'stream across a broker {how} ({down:.1f} s down): 2000 '
           f'confirmed ({publisher.failed} publish errors retried); plain '
           f'readers got all, duplicates {duplicates}; Zope reader applied '
           f'each once ({len(applied)} applied, {status["skipped"]} '
           f'skipped re-deliveries, {status["reconnects"]} reconnects)')
    db.close()
