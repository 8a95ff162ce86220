"""zamqp.metrics: the renderer on its own (parsed back with
prometheus_client's parser), the registry, the prometheus_client
collector, then real producers and consumers on the shared broker
scraped over HTTP, a Zope view, and the broker's close reason on a
private node's shutdown."""
import gc
import logging
import socket
import time
import urllib.error
import urllib.request

import pytest
from amqp import exceptions as amqp_errors
from prometheus_client.parser import text_string_to_metric_families

from zamqp import AMQPConsumer
from zamqp import AMQPProducer
from zamqp import AMQPProps
from zamqp import NotConfirmed
from zamqp import metrics
from zamqp.logtext import broker_closed
from zamqp.metrics import ClientMetrics
from zamqp.testhelpers import unique
from zamqp.testhelpers import wait_for
from zamqp.tests import brokers


def sample_metrics(**kw):
    values = dict(kind='producer', name='shop', exchange='ex', queue=None,
                  broker='127.0.0.1:5672//',
                  counters={c: 0 for c, _ in metrics.PRODUCER_COUNTERS},
                  backlog=0, state='connected', last_error=None)
    values.update(kw)
    return ClientMetrics(**values)


def parse(text):
    """{(sample name, frozenset of labels): value} and the families."""
    families = list(text_string_to_metric_families(text))
    samples = {}
    for family in families:
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in samples, key      # no duplicate series
            samples[key] = sample.value
    return samples, {f.name: f for f in families}


def value(samples, metric, **labels):
    found = [v for (n, ls), v in samples.items()
             if n == metric and all(dict(ls).get(k) == v2
                                  for k, v2 in labels.items())]
    assert len(found) == 1, (metric, labels, found)
    return found[0]


# the renderer

def test_label_values_are_escaped_and_parse_back():
    name = 'a "quoted" back\\slash\nnew line'
    text = metrics.render([sample_metrics(name=name, exchange='ex\\"')])
    assert '\n' not in text.split('zamqp_published_total{')[1].split('}')[0]
    assert r'name="a \"quoted\" back\\slash\nnew line"' in text
    samples, _ = parse(text)
    assert value(samples, 'zamqp_published_total', name=name,
                 exchange='ex\\"') == 0


def test_help_and_type_lines_and_counter_names():
    counters = {c: i for i, (c, _) in enumerate(metrics.PRODUCER_COUNTERS)}
    text = metrics.render([sample_metrics(counters=counters, backlog=7)])
    lines = text.splitlines()
    for counter, _ in metrics.PRODUCER_COUNTERS:
        name = f'zamqp_{counter}_total'
        index = lines.index(f'# TYPE {name} counter')
        assert lines[index - 1].startswith(f'# HELP {name} ')
        assert lines[index + 1].startswith(name + '{')
    assert '# TYPE zamqp_backlog gauge' in lines
    samples, families = parse(text)
    assert families['zamqp_published'].type == 'counter'
    assert families['zamqp_backlog'].type == 'gauge'
    assert value(samples, 'zamqp_given_up_total') == 5
    assert value(samples, 'zamqp_backlog') == 7
    assert value(samples, 'zamqp_state', state='connected') == 1
    assert value(samples, 'zamqp_state', state='down') == 0
    assert not [k for k in samples if k[0] == 'zamqp_received_total']


def test_help_text_escaping():
    assert metrics.escape_help('a\\b\nc') == 'a\\\\b\\nc'
    assert metrics.escape_label('"\\\n') == '\\"\\\\\\n'


def test_nothing_to_render():
    assert metrics.render([]) == ''


def test_alike_producers_get_distinct_names():
    text = metrics.render([sample_metrics(), sample_metrics()])
    samples, _ = parse(text)
    assert value(samples, 'zamqp_published_total', name='shop') == 0
    assert value(samples, 'zamqp_published_total', name='shop#2') == 0


def test_last_error_is_short_one_line_and_without_secrets():
    props = AMQPProps(url='amqp://user:sekrit@127.0.0.1:1/', exchange='e',
                      secret='signing-key-0123456789')
    producer = AMQPProducer('secretive', props)
    producer.stats.error('login as user:sekrit with '
                         'signing-key-0123456789 failed\n' + 'x' * 500)
    text = metrics.render([metrics.snapshot(producer)])
    assert 'sekrit' not in text and 'signing-key' not in text
    samples, _ = parse(text)
    [error] = [dict(ls)['error'] for (n, ls) in samples
               if n == 'zamqp_last_error_info']
    assert error.startswith('login as user:*** with *** failed x')
    assert len(error) == metrics.ERROR_LIMIT and error.endswith('...')
    assert dict(metrics.snapshot(producer).labels)['broker'] == \
        '127.0.0.1:1//'


# the registry and the prometheus_client collector

def test_registry_holds_weak_references():
    producer = AMQPProducer(unique('weak'), AMQPProps(exchange='e'))
    consumer = AMQPConsumer(unique('weak'), AMQPProps(exchange='e'), print)
    assert producer in metrics.registered()
    assert consumer in metrics.registered()
    names = {m.name for m in metrics.collect()}
    assert {producer.queue, consumer.queue} <= names
    name = producer.queue
    del producer
    gc.collect()
    assert name not in {m.name for m in metrics.collect()}
    metrics.unregister(consumer)
    assert consumer not in metrics.registered()


def test_prometheus_client_collector_gives_the_same_samples():
    from prometheus_client import CollectorRegistry
    from prometheus_client import generate_latest
    given = [sample_metrics(counters=dict(
        {c: 3 for c, _ in metrics.PRODUCER_COUNTERS}), last_error='boom'),
        sample_metrics(kind='consumer', name='in', queue='q',
                       state='consuming', backlog=2, counters={
                           c: 4 for c, _ in metrics.CONSUMER_COUNTERS})]
    registry = CollectorRegistry()
    registry.register(metrics.Collector(lambda: given))
    theirs, _ = parse(generate_latest(registry).decode())
    ours, _ = parse(metrics.render(given))
    assert theirs == ours
    assert value(ours, 'zamqp_handled_total', kind='consumer') == 4
    assert value(ours, 'zamqp_last_error_info', error='boom') == 1


def test_serve_binds_loopback_and_stops():
    server = metrics.serve(0, source=lambda: [sample_metrics()])
    assert server.host == '127.0.0.1'
    with urllib.request.urlopen(server.url, timeout=5) as response:
        assert response.headers['Content-Type'] == metrics.CONTENT_TYPE
        assert b'zamqp_published_total{kind="producer"' in response.read()
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(server.url.replace('/metrics', '/x'),
                               timeout=5)
    assert raised.value.code == 404
    assert server.stop()
    with pytest.raises(OSError):
        socket.create_connection(('127.0.0.1', server.port), timeout=1)


def test_broker_closed_text():
    forced = amqp_errors.error_for_code(
        320, "CONNECTION_FORCED - broker forced connection closure with "
        "reason 'shutdown'", (0, 0), amqp_errors.ConnectionError)
    assert broker_closed(forced) == (
        "the broker closed the connection: 320 CONNECTION_FORCED - broker "
        "forced connection closure with reason 'shutdown'")
    missing = amqp_errors.error_for_code(
        404, 'NOT_FOUND - no queue', (50, 10), amqp_errors.ChannelError)
    assert broker_closed(missing) == ('the broker closed the channel (after '
                                      'Queue.declare): 404 NOT_FOUND - no '
                                      'queue')
    assert broker_closed(ConnectionResetError(104, 'reset')) is None
    # raised by the frame reader here: the broker closed nothing
    assert broker_closed(amqp_errors.FrameSyntaxError(
        'content header of 3 bytes on channel 1: too short')) is None


# real producers and consumers on the shared broker

@pytest.fixture
def work(admin):
    name = unique('metrics')
    yield name
    admin.delete_queue(name)


def scrape(url):
    with urllib.request.urlopen(url, timeout=5) as response:
        return parse(response.read().decode('utf-8'))[0]


def test_scrape_counts_publish_consume_retry_and_dead_letter(
        props, work, start, admin):
    def handle(body):
        if body == 'poison':
            raise RuntimeError('cannot digest')

    consumer = AMQPConsumer(work, props, handle, shared=True, max_retries=1)
    start(consumer)
    assert wait_for(lambda: consumer.status()['state'] == 'consuming')
    producer = AMQPProducer(work, props, confirm=True)
    for number in range(5):
        producer(f'fine {number}')
    producer('poison')
    assert wait_for(lambda: consumer.status()['dead_lettered'] == 1 and
                    consumer.status()['handled'] == 5)
    time.sleep(0.2)
    server = metrics.serve(0)
    try:
        samples = scrape(server.url)
    finally:
        server.stop()
    mine = dict(name=work, exchange=props.exchange)
    for counter, expected in (('published', 6), ('confirmed', 6),
                              ('nacked', 0), ('returned', 0),
                              ('given_up', 0), ('resent', 0),
                              ('reconnects', 0)):
        assert value(samples, f'zamqp_{counter}_total', kind='producer',
                     **mine) == expected, counter
    for counter, expected in (('received', 7), ('handled', 5),
                              ('failed', 2), ('retried', 1),
                              ('dead_lettered', 1), ('refused', 0),
                              ('reconnects', 0)):
        assert value(samples, f'zamqp_{counter}_total', kind='consumer',
                     queue=work, **mine) == expected, counter
    assert value(samples, 'zamqp_backlog', kind='producer', **mine) == 0
    assert value(samples, 'zamqp_backlog', kind='consumer', **mine) == 0
    assert value(samples, 'zamqp_state', kind='consumer', state='consuming',
                 **mine) == 1
    assert value(samples, 'zamqp_state', kind='producer', state='connected',
                 **mine) == 1
    assert admin.queue_depth(f'{props.exchange}.dead') == 1
    producer.close()


def test_windowed_producer_counts_returned_and_backlog(make_props):
    props = make_props(type='direct')
    producer = AMQPProducer('nowhere', props, mandatory=True)
    for _ in range(3):
        producer('lost')
    try:
        producer.flush()
    except NotConfirmed:
        pass        # unless the confirms were read before the flush
    found = metrics.snapshot(producer)
    assert found.counters['published'] == 3
    assert found.counters['returned'] == 3
    assert found.counters['confirmed'] == 0
    assert found.backlog == 0
    assert 'returned unroutable' in found.last_error
    producer.close()


# the Zope view

@pytest.fixture
def folder():
    from OFS.Folder import Folder
    from plone.testing import zca
    from Testing.makerequest import makerequest
    zca.pushGlobalRegistry()
    yield makerequest(Folder('site'))
    zca.popGlobalRegistry()


@pytest.mark.zope
def test_zope_view_names_producers_as_configured(folder, props):
    import zope.component
    from zamqp.interfaces import IProducer
    from zamqp.zope.browser.views import MetricsView
    producer = AMQPProducer(unique('view'), props)
    zope.component.provideUtility(producer, IProducer, 'shop.orders')
    producer('one')
    producer.flush()
    body = MetricsView(folder, folder.REQUEST)()
    response = folder.REQUEST.response
    assert response.getHeader('Content-Type') == metrics.CONTENT_TYPE
    assert 'no-store' in response.getHeader('Cache-Control')
    samples, _ = parse(body)
    assert value(samples, 'zamqp_confirmed_total', name='shop.orders') == 1
    assert value(samples, 'zamqp_published_total', name='shop.orders') == 1
    producer.close()


@pytest.mark.zope
def test_zope_view_is_registered_for_managers_only():
    import os
    import zamqp.zope.browser
    path = os.path.join(os.path.dirname(zamqp.zope.browser.__file__),
                        'configure.zcml')
    text = open(path).read()
    page = text[text.index('name="zamqp-metrics"'):]
    page = page[:page.index('/>')]
    assert 'permission="zope2.ViewManagementScreens"' in page


# the broker's reason on shutdown (a private node)

@pytest.mark.skipif(brokers.missing(), reason='RabbitMQ is not installed')
def test_shutdown_reason_is_logged_in_one_line(broker, start, caplog):
    caplog.set_level(logging.ERROR, logger='zamqp')
    props = AMQPProps(url=broker.url, exchange=unique('shutdown'))
    consumer = AMQPConsumer(unique('shutdown'), props, print)
    start(consumer)
    assert wait_for(lambda: consumer.status()['state'] == 'consuming',
                    timeout=10)
    broker.ctl('stop', check=False)
    assert wait_for(lambda: consumer.status()['last_error'], timeout=10)
    error = consumer.status()['last_error']
    assert error.endswith(
        ": the broker closed the connection: 320 CONNECTION_FORCED - broker "
        "forced connection closure with reason 'shutdown'"), error
    lines = [r.getMessage() for r in caplog.records
             if r.name == 'zamqp.consumer']
    assert any("reason 'shutdown'; reconnecting" in line and
               '\n' not in line for line in lines), lines
    assert value(parse(metrics.render([metrics.snapshot(consumer)]))[0],
                 'zamqp_last_error_info') == 1


# the tracing hooks (a fake propagator: no OpenTelemetry needed)

class FakePropagator:
    """Writes and reads ``traceparent`` as OpenTelemetry's W3C
    propagator would; the current trace is a thread-local value."""

    def __init__(self):
        import threading
        self.local = threading.local()

    def inject(self, carrier):
        trace = getattr(self.local, 'trace', None)
        if trace is not None:
            carrier['traceparent'] = trace

    def extract(self, carrier):
        return {'trace': carrier.get('traceparent')}


@pytest.fixture
def tracing():
    from zamqp import tracing
    yield tracing
    tracing.configure(None)


def test_no_tracing_adds_no_header(tracing, props):
    producer = AMQPProducer('t', props)
    assert not tracing.configured()
    assert 'application_headers' not in producer.message('x').properties
    with tracing.receiving(producer.message('x')) as context:
        assert context is None and tracing.current_context() is None


def test_trace_context_travels_in_headers(tracing, props, work, start):
    fake = FakePropagator()
    attached = []
    tracing.configure(fake, attach=lambda c: attached.append(c) or len(
        attached), detach=lambda token: attached.append(('detach', token)))
    seen = []

    def handle(body, message):
        seen.append((body, tracing.current_context(),
                     (message.headers or {}).get('traceparent')))

    consumer = AMQPConsumer(work, props, handle, shared=True,
                            pass_message=True)
    start(consumer)
    assert wait_for(lambda: consumer.status()['state'] == 'consuming')
    producer = AMQPProducer(work, props, confirm=True)
    fake.local.trace = fake_trace()
    producer('traced', headers={'other': 'kept'})
    fake.local.trace = None
    producer('plain')
    assert wait_for(lambda: len(seen) == 2)
    assert seen[0] == ('traced', {'trace': fake_trace()}, fake_trace())
    assert seen[1] == ('plain', {'trace': None}, None)
    assert attached == [{'trace': fake_trace()}, ('detach', 1),
                        {'trace': None}, ('detach', 3)]
    assert tracing.current_context() is None
    producer.close()


def fake_trace():
    return '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01'


def test_given_headers_win_over_injected(tracing):
    fake = FakePropagator()
    fake.local.trace = 'injected'
    tracing.configure(fake)
    properties = {'application_headers': {'traceparent': 'mine', 'a': 1}}
    tracing.inject(properties)
    assert properties['application_headers'] == {'traceparent': 'mine',
                                                 'a': 1}
    properties = {}
    tracing.inject(properties)
    assert properties == {'application_headers': {'traceparent': 'injected'}}


# @@zamqp-metrics of a real Zope instance (test_status_page's layer: an
# instance on a private node, with a Manager and a user without a role)

try:
    from zamqp.tests import test_status_page as _page
except ImportError:         # the core suite, without Zope
    _page = None

if _page is not None:
    import unittest

    @pytest.mark.zope
    @pytest.mark.slow
    @pytest.mark.skipif(brokers.missing() or _page.chromium_missing(),
                        reason='RabbitMQ or Chromium is not installed')
    class MetricsViewOfAnInstance(unittest.TestCase):

        layer = _page.STATUS_INSTANCE

        def test_only_managers_scrape_every_consumer(self):
            port = self.layer['status'].port
            url = f'http://127.0.0.1:{port}/@@zamqp-metrics'
            for auth in (None, _page.VIEWER):
                status, _, body = _page.fetch(url, auth=auth)
                self.assertEqual(status, 401, auth)
                self.assertNotIn('zamqp_', body)

            def consuming():
                status, headers, body = _page.fetch(url, auth=_page.MANAGER)
                self.assertEqual(status, 200, body)
                self.assertEqual(headers['Content-Type'],
                                 metrics.CONTENT_TYPE)
                self.assertNotIn(self.layer.password, body)
                samples = parse(body)[0]
                return all(value(samples, 'zamqp_state', kind='consumer',
                                 name=name, state='consuming') == 1
                           for name in _page.NAMES)

            self.assertTrue(wait_for(consuming, timeout=30, interval=0.5))
