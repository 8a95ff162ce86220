"""Counters of every producer and consumer of the process, for monitoring.

One API (see docs/metrics.rst):

- ``collect()``: a ``ClientMetrics`` (IClientMetrics) for every live
  AMQPProducer and AMQPConsumer of the process, newest last; ``snapshot(
  obj)`` for one of them. Plain values, read from what the producer
  (``status()``, zamqp.status.ProducerStats) and the consumer
  (``status()``, zamqp.status.ConsumerStatus) count anyway: no broker
  round trip, only each object's status lock.
- ``render(metrics=None)``: the Prometheus text exposition format
  (version 0.0.4) of ``collect()`` or of the ClientMetrics given; no
  dependency.
- ``Collector``: the same as a ``prometheus_client`` collector
  (``register_collector()``); prometheus_client is imported only then.
- ``serve(port)``: a small HTTP endpoint (``GET /metrics``) in a daemon
  thread, on 127.0.0.1 unless told otherwise; ``stop()`` ends it.

Producers and consumers put themselves in the registry when they are
made (``register``); it holds weak references, so a producer or consumer
nobody uses any more leaves it when it is garbage collected.

No label and no value carries a password or a signing secret: brokers
are shown as ``host:port/vhost`` and error texts are scrubbed of the
secrets of their props.
"""
from __future__ import annotations

import http.server
import itertools
import threading
import weakref
from typing import TYPE_CHECKING
from typing import Any

from zope.interface import implementer

from zamqp.interfaces import IClientMetrics

if TYPE_CHECKING:
    from typing import Callable
    from typing import Iterable
    from typing import Iterator
    from typing import Mapping

    from zamqp.consumer import AMQPConsumer
    from zamqp.producer import AMQPProducer
    from zamqp.props import AMQPProps

#: The counters of a producer and of a consumer, in the order rendered:
#: (name in ClientMetrics.counters, HELP text).
PRODUCER_COUNTERS = (
    ('published', 'Messages sent to the broker for the first time.'),
    ('resent', 'Messages sent again on a new connection because the old '
               'one had not confirmed them.'),
    ('confirmed', 'Messages the broker confirmed (basic.ack).'),
    ('nacked', 'Messages the broker refused (basic.nack).'),
    ('returned', 'Messages the broker returned unroutable (mandatory).'),
    ('given_up', 'Messages left unconfirmed by flush(), close() or a '
                 'confirm=True call that timed out.'),
    ('reconnects', 'Connections opened after the first one.'),
)
CONSUMER_COUNTERS = (
    ('received', 'Messages the broker delivered to the consumer.'),
    ('handled', 'Messages whose handler returned.'),
    ('refused', 'Messages not decoded (limits, signatures, content '
                'type, broken frames).'),
    ('failed', 'Handler calls that raised.'),
    ('retried', 'Copies put back in the queue for another try.'),
    ('dead_lettered', 'Copies sent to the dead-letter exchange.'),
    ('dropped', 'Messages rejected without a copy.'),
    ('reconnects', 'Connections opened after the first one.'),
    ('crashes', 'Unexpected errors in zamqp itself.'),
    ('timeouts', 'Channels the broker closed because a handler outlived '
                 'consumer_timeout.'),
    ('skipped', 'Stream messages delivered again after they were '
                'handled, not handed to the handler.'),
    ('missed', "Stream messages the stream's retention removed before "
               'the reader read them.'),
)
#: The states of each kind, for the ``zamqp_state`` gauge.
STATES = {
    'producer': ('idle', 'connected', 'disconnected', 'down', 'closing'),
    'consumer': ('starting', 'consuming', 'reconnecting', 'stopped',
                 'failed'),
}
#: The labels of every sample, in this order (``state`` and ``error``
#: are added to ``zamqp_state`` and ``zamqp_last_error_info``).
LABELS = ('kind', 'name', 'exchange', 'queue', 'broker')
#: The media type of ``render()``'s text.
CONTENT_TYPE = 'text/plain; version=0.0.4; charset=utf-8'
#: Characters of a last error kept in ``zamqp_last_error_info``.
ERROR_LIMIT = 200

_registry = {}                  # sequence number -> weakref
_sequence = itertools.count()
_lock = threading.Lock()


def register(obj: object) -> None:
    """Add a producer or consumer to the registry (their ``__init__``
    calls it); a weak reference, so it never keeps ``obj`` alive. Dead
    references are dropped here and by ``registered()`` (not by weakref
    callbacks: those may run in any thread, in the middle of a copy)."""
    number = next(_sequence)
    with _lock:
        if number % 256 == 0:
            _prune()
        _registry[number] = weakref.ref(obj)


def _prune():
    for number, ref in list(_registry.items()):
        if ref() is None:
            del _registry[number]


def unregister(obj: object) -> None:
    """Take ``obj`` out of the registry (it need not be in it)."""
    with _lock:
        for number, ref in list(_registry.items()):
            if ref() is obj:
                del _registry[number]


def registered() -> list[Any]:
    """The live registered producers and consumers, oldest first."""
    with _lock:
        _prune()
        refs = list(_registry.values())
    return [obj for obj in (ref() for ref in refs) if obj is not None]


@implementer(IClientMetrics)
class ClientMetrics:
    """What one producer or consumer counted, as plain values (see
    IClientMetrics)."""

    def __init__(self, kind: str, name: str, exchange: str,
                 queue: str | None, broker: str, counters: dict[str, int],
                 backlog: int | None, state: str | None,
                 last_error: str | None,
                 stream: dict[str, int | None] | None = None) -> None:
        self.kind = kind
        self.name = name
        self.exchange = exchange
        self.queue = queue
        self.broker = broker
        self.counters = counters
        self.backlog = backlog
        self.state = state
        self.last_error = last_error
        self.stream = stream

    @property
    def labels(self) -> dict[str, str]:
        return {label: str(getattr(self, label) or '') for label in LABELS}

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__, counters=dict(self.counters),
                    stream=dict(self.stream) if self.stream else None)

    def __repr__(self):
        return f'<ClientMetrics {self.kind} {self.name!r} {self.state}>'


def snapshot(obj: AMQPProducer | AMQPConsumer,
             name: str | None = None) -> ClientMetrics:
    """The ClientMetrics of one producer or consumer now; ``name``
    (default: the name it was made with) labels it."""
    props = obj.props
    status = obj.status()
    broker = f"{','.join(props.addresses)}/{props.virtual_host}"
    if hasattr(obj, 'callback'):            # a consumer
        kind, spec = 'consumer', CONSUMER_COUNTERS
        queue = obj.queue_name
        values = dict(status, received=obj.delivered)
        backlog = max(obj.delivered - obj.started, 0)
    else:
        kind, spec = 'producer', PRODUCER_COUNTERS
        queue = None
        values = status
        backlog = status.get('unconfirmed', 0)
    counters = {counter: int(values.get(counter) or 0)
                for counter, _help in spec}
    stream = None
    if status.get('reader') is not None:
        stream = {'reader': status['reader'],
                  'position': status.get('position'),
                  'lag': status.get('lag')}
    return ClientMetrics(
        kind, obj.queue if name is None else name, props.exchange, queue,
        broker, counters, backlog, status.get('state'),
        scrub(status.get('last_error'), props), stream)


def collect(names: Mapping[int, str] | None = None) -> list[ClientMetrics]:
    """A ClientMetrics for every live registered producer and consumer,
    oldest first. ``names`` (optional) maps ``id(obj)`` to the name to
    label an object with (the Zope view passes the ZCML names)."""
    names = names or {}
    found = []
    for obj in registered():
        try:
            found.append(snapshot(obj, names.get(id(obj))))
        except Exception:       # one odd object must not hide the rest
            continue
    return found


def secrets(props: AMQPProps) -> list[str]:
    """The texts of ``props`` that must never be shown: the password
    and the signing secrets."""
    found = [getattr(props, 'password', None),
             getattr(props, 'secret', None),
             *(getattr(props, 'accepted_secrets', None) or ())]
    return sorted({s for s in found if isinstance(s, str) and s},
                  key=len, reverse=True)


def scrub(text: object, props: AMQPProps) -> str | None:
    """``text`` with each secret of ``props`` replaced by ``***`` (None
    stays None)."""
    if text is None:
        return None
    text = str(text)
    for secret in secrets(props):
        text = text.replace(secret, '***')
    return text


# the Prometheus text exposition format

def escape_label(value: object) -> str:
    """A label value as the text format wants it inside double quotes:
    backslash, double quote and line feed escaped."""
    return (str(value).replace('\\', '\\\\').replace('"', '\\"')
            .replace('\n', '\\n'))


def escape_help(text: object) -> str:
    """HELP text: backslash and line feed escaped."""
    return str(text).replace('\\', '\\\\').replace('\n', '\\n')


def families(metrics: Iterable[ClientMetrics]) -> list[
        tuple[str, str, str, list[tuple[dict[str, str], int]]]]:
    """``(name, type, help, [(labels, value), ...])`` for the metrics
    of ``metrics`` (ClientMetrics): what ``render`` and ``Collector``
    write. Only families with samples; a name that repeats its labels
    (two producers made alike) gets ``#2``, ``#3`` ... appended."""
    metrics = _unique(metrics)
    out = []
    counters = {}
    for kind, spec in (('producer', PRODUCER_COUNTERS),
                       ('consumer', CONSUMER_COUNTERS)):
        for counter, help_text in spec:
            family = counters.setdefault(
                counter, [f'zamqp_{counter}_total', 'counter', help_text,
                          []])
            family[3].extend((m.labels, m.counters[counter])
                             for m in metrics if m.kind == kind)
    out.extend(tuple(f) for f in counters.values() if f[3])
    backlog = [(m.labels, m.backlog) for m in metrics
               if m.backlog is not None]
    if backlog:
        out.append(('zamqp_backlog', 'gauge',
                    'Producer: messages not confirmed yet or waiting to be '
                    'sent. Consumer: messages delivered that no handler '
                    'began yet (prefetched).', backlog))
    for key, help_text in (
            ('position', 'Stream reader: the offset of the last message '
                         'it is done with.'),
            ('lag', 'Stream reader: offsets the stream has past its '
                    'position (at least; the newest is looked at every '
                    '10 s).')):
        samples = [(dict(m.labels, reader=m.stream.get('reader') or ''),
                    m.stream[key]) for m in metrics
                   if m.stream and m.stream.get(key) is not None]
        if samples:
            out.append((f'zamqp_stream_{key}', 'gauge', help_text,
                        samples))
    states = []
    for m in metrics:
        for state in STATES[m.kind]:
            states.append((dict(m.labels, state=state),
                           1 if m.state == state else 0))
    if states:
        out.append(('zamqp_state', 'gauge',
                    '1 for the state the producer or consumer is in, 0 for '
                    'the others.', states))
    errors = [(dict(m.labels, error=_short(m.last_error)), 1)
              for m in metrics if m.last_error]
    if errors:
        out.append(('zamqp_last_error_info', 'gauge',
                    'The last error of a producer or consumer (its first '
                    f'{ERROR_LIMIT} characters, no secrets).', errors))
    return out


def _short(text):
    text = ' '.join(str(text).split())
    return text if len(text) <= ERROR_LIMIT else \
        text[:ERROR_LIMIT - 3] + '...'


def _unique(metrics):
    seen = {}
    unique = []
    for m in metrics:
        key = tuple(sorted(m.labels.items()))
        seen[key] = seen.get(key, 0) + 1
        if seen[key] > 1:
            m = ClientMetrics(**dict(m.__dict__,
                                     name=f'{m.name}#{seen[key]}'))
        unique.append(m)
    return unique


def render(metrics: Iterable[ClientMetrics] | None = None) -> str:
    """The Prometheus text exposition format (0.0.4) of ``metrics``
    (ClientMetrics; default: ``collect()``): ``# HELP`` and ``# TYPE``
    lines, then one sample per producer or consumer. Send it with
    CONTENT_TYPE."""
    if metrics is None:
        metrics = collect()
    lines = []
    for name, kind, help_text, samples in families(metrics):
        lines.append(f'# HELP {name} {escape_help(help_text)}')
        lines.append(f'# TYPE {name} {kind}')
        for labels, value in samples:
            text = ','.join(f'{key}="{escape_label(val)}"'
                            for key, val in labels.items())
            lines.append(f'{name}{{{text}}} {value}')
    return '\n'.join(lines) + '\n' if lines else ''


# prometheus_client

class Collector:
    """A ``prometheus_client`` collector of ``collect()`` (or of what
    ``source()`` returns): ``REGISTRY.register(Collector())``, or
    ``register_collector()``. prometheus_client is imported only when
    this collects."""

    def __init__(self, source: Callable[[], Iterable[ClientMetrics]]
                 | None = None) -> None:
        self.source = source or collect

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily
        from prometheus_client.core import GaugeMetricFamily
        for name, kind, help_text, samples in families(self.source()):
            if kind == 'counter':
                family = CounterMetricFamily(name, help_text,
                                             labels=_label_names(samples))
            else:
                family = GaugeMetricFamily(name, help_text,
                                           labels=_label_names(samples))
            for labels, value in samples:
                family.add_metric(list(labels.values()), value)
            yield family

    def describe(self) -> list[Any]:
        return []           # samples vary with the producers alive


def _label_names(samples):
    return list(samples[0][0])


def register_collector(registry: Any = None) -> Collector:
    """Register a Collector with ``registry`` (default: prometheus_client's
    REGISTRY) and return it (``registry.unregister(it)`` undoes it)."""
    if registry is None:
        from prometheus_client import REGISTRY as registry
    collector = Collector()
    registry.register(collector)
    return collector


# the HTTP endpoint

class _Handler(http.server.BaseHTTPRequestHandler):

    def do_GET(self):
        if self.path.split('?')[0] not in ('/metrics', '/'):
            self.send_error(404)
            return
        body = render(self.server.source()).encode('utf-8')
        self.send_response(200)
        self.send_header('Content-Type', CONTENT_TYPE)
        self.send_header('Content-Length', str(len(body)))
        self.send_header('Cache-Control', 'no-store')
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        pass                # no line on stderr per scrape


class MetricsServer:
    """The endpoint ``serve()`` started: ``host``, ``port``, ``url``
    (``http://host:port/metrics``); ``stop()`` closes it."""

    def __init__(self, port: int, host: str = '127.0.0.1',
                 source: Callable[[], Iterable[ClientMetrics]]
                 | None = None) -> None:
        self.httpd = http.server.ThreadingHTTPServer((host, port), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.source = source or collect
        self.host, self.port = self.httpd.server_address[:2]
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, name='zamqp-metrics',
            kwargs={'poll_interval': 0.2}, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f'http://{self.host}:{self.port}/metrics'

    def stop(self, timeout: float = 2.0) -> bool:
        """Stop serving and close the socket; True once the thread
        ended."""
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout)
        return not self.thread.is_alive()

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self):
        return f'<MetricsServer {self.url}>'


def serve(port: int, host: str = '127.0.0.1',
          source: Callable[[], Iterable[ClientMetrics]] | None = None
          ) -> MetricsServer:
    """Serve ``render()`` at ``http://host:port/metrics`` (and ``/``) from
    a daemon thread and return the MetricsServer (``stop()`` ends it).
    ``host`` is loopback by default: give ``'0.0.0.0'`` only where the
    network is trusted (the page shows broker addresses and errors).
    ``port`` 0 picks a free port (``server.port``)."""
    return MetricsServer(port, host, source)
