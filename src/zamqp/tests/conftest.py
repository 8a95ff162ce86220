"""Fixtures: every test gets exchanges of its own on the real broker."""
import pytest
import zope.event

from zamqp import events
from zamqp import runner
from zamqp.consumer import AMQPThread
from zamqp.testhelpers import Admin
from zamqp.testhelpers import broker_props
from zamqp.testhelpers import wait_for
from zamqp.testhelpers import zamqp_threads
from zamqp.tests import brokers


@pytest.fixture
def admin():
    """A raw py-amqp connection for checks on the broker."""
    conn = Admin()
    yield conn
    conn.close()


@pytest.fixture
def make_props(admin):
    """Make AMQPProps on a fresh exchange; the exchange goes at teardown."""
    made = []

    def make(**kw):
        props = broker_props(**kw)
        made.append(props.exchange)
        return props

    yield make
    for exchange in made:
        admin.delete_exchange(exchange)
        admin.delete_exchange(exchange + '.dead')   # acking consumers'
        admin.delete_queue(exchange + '.dead')


@pytest.fixture
def props(make_props):
    """Props of a fanout exchange of this test's own."""
    return make_props()


@pytest.fixture
def start():
    """Start an AMQPThread for a consumer; all are stopped at teardown."""
    started = []

    def start(consumer):
        thread = AMQPThread(consumer)
        started.append(thread)
        thread.start()
        return thread

    yield start
    for thread in started:
        thread.consumer.stop()
    for thread in started:
        thread.stop()


@pytest.fixture
def threads(start):
    """``start``, with consumers that reconnect quickly (fault tests)."""

    def start_quick(consumer):
        consumer.max_backoff = 1.0
        return start(consumer)

    return start_quick


@pytest.fixture(autouse=True)
def clean_globals():
    """Leave zope.event, the event producers and the runner as found."""
    subscribers = list(zope.event.subscribers)
    yield
    runner.close()
    events.close_producers()
    zope.event.subscribers[:] = subscribers
    _end_open_transaction()


def _end_open_transaction():
    """Abort a transaction a test left open in this thread (a ZCML
    producer called outside one begins one): it would hold the messages
    of every later test's transactional producers."""
    from zamqp import transactional
    if transactional.active_transaction() is not None:
        import transaction
        transaction.abort()


@pytest.fixture
def no_leaked_threads():
    """Fail the test if a zamqp thread outlives it (a producer's keeper
    thread may take a round, KEEP_INTERVAL, to see its last confirm)."""
    yield
    wait_for(lambda: not zamqp_threads(), timeout=1.0)
    assert zamqp_threads() == []


@pytest.fixture
def pings():
    """The Ping payloads notified locally, via a zope.event subscriber."""
    from zamqp.tests.eventtypes import Ping
    seen = []

    def subscriber(event):
        if isinstance(event, Ping):
            seen.append(event)

    zope.event.subscribers.append(subscriber)
    return seen


@pytest.fixture(scope='module')
def broker():
    """A private RabbitMQ node for the whole module (never the shared
    broker: fault tests stop, kill, alarm and stall it)."""
    node = brokers.PrivateBroker()
    try:
        node.start()
        yield node
    finally:
        node.cleanup()


def pytest_terminal_summary(terminalreporter):
    """Show the figures the fault tests measured again, at the end."""
    if brokers.FIGURES:
        terminalreporter.write_line('')
        for line in brokers.FIGURES:
            terminalreporter.write_line(f'zamqp figures: {line}')
