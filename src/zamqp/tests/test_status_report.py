"""zamqp.zope.browser.report without a browser: real consumers and
producers on the real broker, declared in ZCML in a sandboxed registry
(as docs/zope.rst does), and consumers started by code."""
import threading

import pytest
import transaction
import zope.component
import zope.event
from plone.testing import zca
from zope.configuration import xmlconfig

from zamqp import AMQPConsumer
from zamqp import AMQPEvent
from zamqp import AMQPProducer
from zamqp import AMQPProps
from zamqp.exceptions import PublishFailed
from zamqp.interfaces import IProducer
from zamqp.testhelpers import free_port
from zamqp.testhelpers import unique
from zamqp.testhelpers import wait_for
from zamqp.zope import lifecycle
from zamqp.zope import settings
from zamqp.zope import testing
from zamqp.zope.browser import report
from zamqp.zope.browser.report import gather

ZCML = """\
<configure xmlns:zamqp="http://namespaces.zope.org/zamqp">
  <zamqp:producer name="status.out" exchange="status.x" />
  <zamqp:consumer name="status.in" exchange="status.x"
                  handler="zamqp.tests.test_status_report.handle" />
  {extra}
</configure>
"""

HANDLED = []
#: Set to make ``handle`` wait (the backlog test); cleared after each test.
GATE = threading.Event()


def handle(event):
    """The handler of the ZCML consumers: record, maybe wait."""
    HANDLED.append(event.body)
    GATE.wait(10)


@pytest.fixture
def registry(monkeypatch):
    """A sandboxed registry with zamqp's ZCML and the ZCML given to the
    returned function; consumers stop and exchanges go at tear-down."""
    monkeypatch.delenv(settings.CONSUMERS_VARIABLE, raising=False)
    settings.set_prefix(unique('zamqp.status') + '.')
    zca.pushGlobalRegistry()
    context = xmlconfig.file('meta.zcml', package=zope.component)
    testing.load_zamqp(context)
    GATE.set()
    del HANDLED[:]

    def load(extra=''):
        xmlconfig.string(ZCML.format(extra=extra), context=context)
    yield load
    GATE.set()
    transaction.abort()
    testing.release()
    zca.popGlobalRegistry()
    settings.set_prefix(None)


def row(rows, name):
    [found] = [r for r in rows if r.name == name]
    return found


def test_configured_consumer_and_producer(registry):
    registry()
    before = gather()
    consumer = row(before.consumers, 'status.in')
    assert consumer.state == report.NOT_STARTED
    assert (consumer.alive, consumer.queue, consumer.backlog) == \
        (False, None, None)
    assert consumer.handled == 0 and consumer.source == 'zcml'
    assert not before.healthy
    assert before.unhealthy == [consumer]
    assert before.health_text() == 'UNHEALTHY\nstatus.in: not started\n'

    assert lifecycle.start() == ['status.in']
    assert lifecycle.wait()
    producer = zope.component.getUtility(IProducer, 'status.out')
    assert row(gather().producers, 'status.out').state == 'idle'
    producer('one')
    transaction.commit()        # a <zamqp:producer> publishes on commit
    assert wait_for(lambda: row(gather().consumers, 'status.in').handled
                    == 1)
    now = gather()
    assert now.healthy and now.unhealthy == []
    assert now.health_text() == 'OK\nstatus.in: consuming\n'
    consumer = row(now.consumers, 'status.in')
    props = producer.props
    assert consumer.state == 'consuming' and consumer.alive
    assert consumer.exchange == props.exchange
    assert consumer.exchange_type == 'fanout'
    assert consumer.queue.startswith('status.in.')    # broadcast: own queue
    assert consumer.broker == f'{props.address}/{props.virtual_host}'
    assert consumer.user == props.user
    assert (consumer.refused, consumer.failed, consumer.retried,
            consumer.dead_lettered, consumer.reconnects,
            consumer.restarts) == (0, 0, 0, 0, 0, 0)
    assert consumer.backlog == 0 and consumer.last_error is None
    assert not consumer.shared
    out = row(now.producers, 'status.out')
    assert (out.state, out.confirm, out.unconfirmed, out.source) == \
        ('connected', 'windowed', 0, 'zcml') or out.unconfirmed == 1
    assert out.exchange == props.exchange
    assert out.routing_key == 'status.out'
    assert out.broker == consumer.broker
    # a plain dict of plain values, for JSON
    assert now.as_dict()['healthy'] is True
    assert now.as_dict()['consumers'][0]['name'] == 'status.in'


def test_consumers_kept_off_are_healthy(registry, monkeypatch):
    registry()
    monkeypatch.setenv(settings.CONSUMERS_VARIABLE, 'off')
    now = gather()
    assert not now.consumers_enabled
    assert row(now.consumers, 'status.in').state == report.NOT_STARTED
    assert now.healthy
    assert now.health_text() == 'OK\nconsumers kept off by configuration\n'


def test_no_consumers_configured(registry):
    now = gather()
    assert now.consumers == [] and now.healthy
    assert now.health_text() == 'OK\nno consumers configured\n'


def test_backlog_counts_delivered_messages_no_handler_began(registry):
    registry()
    GATE.clear()                # the handler waits
    lifecycle.start()
    assert lifecycle.wait()
    producer = zope.component.getUtility(IProducer, 'status.out')
    for n in range(5):
        producer(n)
    transaction.commit()
    assert wait_for(lambda: row(gather().consumers, 'status.in').backlog
                    == 4)
    consumer = row(gather().consumers, 'status.in')
    assert consumer.busy and HANDLED == [0] and consumer.handled == 0
    GATE.set()
    assert wait_for(lambda: row(gather().consumers, 'status.in').handled
                    == 5)
    consumer = row(gather().consumers, 'status.in')
    assert (consumer.backlog, consumer.busy) == (0, False)


def test_password_and_secrets_never_shown(registry):
    password, secret = unique('pw-never-shown'), unique('secret-not-shown')
    port = free_port()          # nothing listens there
    registry(f'''
  <zamqp:connection name="nowhere" secret="{secret}"
      url="amqp://statususer:{password}@127.0.0.1:{port}/vh" />
  <zamqp:consumer name="status.down" connection="nowhere"
      exchange="status.x" handler="zamqp.tests.test_status_report.handle" />
  <zamqp:producer name="status.down.out" connection="nowhere"
      exchange="status.x" />''')
    lifecycle.start()
    assert lifecycle.wait() is False    # status.in consumes, not status.down
    assert wait_for(lambda: row(gather().consumers, 'status.down')
                    .last_error is not None)
    now = gather()
    down = row(now.consumers, 'status.down')
    assert down.state == 'reconnecting'
    assert down.broker == f'127.0.0.1:{port}/vh'
    assert down.user == 'statususer'
    assert row(now.producers, 'status.down.out').user == 'statususer'
    assert not now.healthy
    assert [r.name for r in now.unhealthy] == ['status.down']
    assert now.health_text().splitlines()[0] == 'UNHEALTHY'
    text = repr(now.as_dict())
    assert password not in text and secret not in text
    # an error text that names a secret is scrubbed
    props = zope.component.getUtility(
        report.IConsumerSpec, 'status.down').props
    assert report.scrub(f'bad {password} and {secret}', props) == \
        'bad *** and ***'
    assert report.scrub(None, props) is None


def test_consumers_started_by_code_and_event_producers(props, start,
                                                       registry):
    thread = start(AMQPConsumer('bycode', props, print))
    zope.event.notify(AMQPEvent('status.events', props, 'hello'))
    transaction.commit()        # published on commit
    now = gather()
    mine = row(now.consumers, 'bycode')
    assert (mine.source, mine.state, mine.queue) == \
        ('code', 'consuming', thread.consumer.queue_name)
    assert now.healthy          # only configured consumers count
    [events] = [r for r in now.producers if r.source == 'events'
                and r.exchange == props.exchange]
    assert events.name == 'status.events'
    assert (events.state, events.unconfirmed) == ('connected', 0) or \
        events.unconfirmed == 1


def test_producer_states(props):
    producer = AMQPProducer('states', props)
    assert report.producer_status(producer) == dict(state='idle',
                                                    unconfirmed=0)
    producer('x')
    producer.flush()
    assert report.producer_status(producer) == dict(state='connected',
                                                    unconfirmed=0)
    producer.close()            # it would connect again when used
    assert report.producer_status(producer)['state'] == 'disconnected'
    broken = AMQPProducer('nowhere', AMQPProps(
        url=f'amqp://guest:guest@127.0.0.1:{free_port()}/'))
    assert report.producer_status(broken)['state'] == 'idle'
    # a message published on commit waits for the broker
    broken.publish_committed(broken.message('waits'), 'nowhere')
    assert report.producer_status(broken) == dict(state='down',
                                                  unconfirmed=1)
    with pytest.raises(PublishFailed):
        broken.close(timeout=0.1)

