"""Remote zope events: AMQPEvent publishes once, AMQPEventCallback
notifies the payload in the receiving process."""
import subprocess
import sys
import time

import pytest
import zope.component
import zope.event
from zope.component import getGlobalSiteManager

from zamqp import AMQPConsumer
from zamqp import AMQPEvent
from zamqp import AMQPEventCallback
from zamqp import events
from zamqp.interfaces import IAMQPEvent
from zamqp.testhelpers import wait_for
from zamqp.tests.eventtypes import Ping


@pytest.fixture
def received(props, start):
    """Every body published to the 'ev' queue of ``props``, raw."""
    got = []
    start(AMQPConsumer('ev', props, got.append, allow=[Ping]))
    return got


def test_event_reaches_consumer_and_is_notified_locally(props, start, pings):
    start(AMQPConsumer('ev', props, AMQPEventCallback(), allow=[Ping]))
    payload = Ping('hello')
    zope.event.notify(AMQPEvent('ev', props, payload))
    assert wait_for(lambda: pings == [Ping('hello')])
    # the subscriber saw the copy the consumer received, not the payload
    assert pings[0] is not payload
    time.sleep(0.2)
    assert pings == [Ping('hello')]


def test_creating_an_event_installs_dispatch_once(props):
    events.uninstall()
    assert events.dispatch not in zope.event.subscribers
    AMQPEvent('ev', props, Ping('a'))
    AMQPEvent('ev', props, Ping('b'))
    events.install()
    assert zope.event.subscribers.count(events.dispatch) == 1


def test_importing_zamqp_leaves_zope_event_alone():
    code = (
        'import zope.event\n'
        'before = list(zope.event.subscribers)\n'
        'import zamqp, zamqp.events, zamqp.runner\n'
        'assert zope.event.subscribers == before, zope.event.subscribers\n'
        'from zamqp import AMQPProps, AMQPEvent\n'
        'AMQPEvent("q", AMQPProps(), None)\n'
        'import zamqp.events\n'
        'assert zope.event.subscribers == before + [zamqp.events.dispatch]\n'
        'print("ok")\n')
    result = subprocess.run([sys.executable, '-c', code],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == 'ok'


@pytest.fixture
def component_dispatch():
    """zope.component's event dispatch plus zamqp's handler in the
    global registry: both paths to publish an AMQPEvent are active."""
    import zope.component.event  # registers its dispatch on first import
    if zope.component.event.dispatch not in zope.event.subscribers:
        # an earlier test's clean-up removed it (the import is cached)
        zope.event.subscribers.append(zope.component.event.dispatch)
    gsm = getGlobalSiteManager()
    zope.component.provideHandler(events.dispatch, [IAMQPEvent])
    yield
    assert gsm.unregisterHandler(events.dispatch, [IAMQPEvent])


def test_both_paths_publish_once(props, received, component_dispatch):
    from zope.component.event import dispatch as component_dispatch_
    event = AMQPEvent('ev', props, Ping('once'))
    assert component_dispatch_ in zope.event.subscribers
    assert events.dispatch in zope.event.subscribers
    calls = []
    original = event.publish
    event.publish = lambda: calls.append(original()) or calls[-1]
    zope.event.notify(event)
    assert calls.count(True) == 1 and len(calls) == 2  # both paths ran
    assert wait_for(lambda: received == [Ping('once')])
    time.sleep(0.3)
    assert received == [Ping('once')]


def test_component_path_alone_publishes(props, received, component_dispatch):
    event = AMQPEvent('ev', props, Ping('registry'))
    events.uninstall()
    zope.event.notify(event)
    assert wait_for(lambda: received == [Ping('registry')])


def test_same_event_twice_publishes_once(props, received):
    event = AMQPEvent('ev', props, Ping('twice'))
    zope.event.notify(event)
    zope.event.notify(event)
    assert event.publish() is False
    assert wait_for(lambda: received == [Ping('twice')])
    time.sleep(0.3)
    assert received == [Ping('twice')]
    # a new event with the same payload is sent again
    zope.event.notify(AMQPEvent('ev', props, Ping('twice')))
    assert wait_for(lambda: received == [Ping('twice')] * 2)


def test_event_producers_are_reused(props, received):
    zope.event.notify(AMQPEvent('ev', props, Ping('0')))
    assert list(events._producers) == [('ev', props)]
    producer = events._producers[('ev', props)]
    connection = producer.connection.connection
    assert connection is not None
    for n in range(1, 10):
        zope.event.notify(AMQPEvent('ev', props, Ping(str(n))))
    assert wait_for(lambda: len(received) == 10)
    assert received == [Ping(str(n)) for n in range(10)]
    assert list(events._producers) == [('ev', props)]
    assert events._producers[('ev', props)] is producer
    assert producer.connection.connection is connection


def test_close_producers_closes_connections(props, received):
    zope.event.notify(AMQPEvent('ev', props, Ping('x')))
    producer = events._producers[('ev', props)]
    connection = producer.connection.connection
    events.close_producers()
    assert events._producers == {}
    assert producer.connection.connection is None
    assert not connection.connected


def test_event_that_failed_to_publish_can_be_sent_again(props, received):
    from zamqp import AMQPProps
    from zamqp import ConnectionFailed
    from zamqp.testhelpers import free_port
    event = AMQPEvent('ev', AMQPProps(host='127.0.0.1', port=free_port()),
                      Ping('retry'))
    with pytest.raises(ConnectionFailed):
        zope.event.notify(event)
    event.props = props
    assert event.publish() is True
    assert wait_for(lambda: len(received) == 1)
    assert event.publish() is False
