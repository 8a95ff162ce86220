"""What zamqp runs in this process, for status pages and health checks.

``gather()`` returns a StatusReport: one ConsumerRow per consumer and
one ProducerRow per producer, as plain values (strings, numbers, None)
that a page template, a JSON view or a test can use as they are. It
needs neither a request nor a Zope object, only the component registry
of the current site (``zope.component``): a ZMI page, a Plone control
panel and a test can share it.

The contract of every row: no password and no signing secret, ever.
Broker settings are shown as ``host:port`` addresses, virtual host and
user name; error texts are scrubbed of the passwords and secrets of the
connection they come from (replaced by ``***``).

Consumers are found in three places and merged by name:

- the ``IConsumerSpec`` utilities (``<zamqp:consumer>``): every
  configured consumer has a row, started or not (``not started``: kept
  off by ``ZAMQP_CONSUMERS=off`` or zope.conf, or the database is not
  open yet);
- ``zamqp.zope.lifecycle.status()``: state, counters and restarts of the
  consumers the lifecycle started;
- the ``AMQPThread`` s alive in the process: the consumer objects
  (queue name, backlog), and consumers started by code outside the
  lifecycle (``source == 'code'``).

Producers are the ``IProducer`` utilities (``<zamqp:producer>``) and the
shared producers of ``AMQPEvent`` (``zamqp.events``, ``source ==
'events'``).
"""
import threading
import time

import zope.component

from zamqp import events
from zamqp import metrics
from zamqp.consumer import AMQPThread
from zamqp.interfaces import IConsumerSpec
from zamqp.interfaces import IProducer
from zamqp.status import COUNTERS
from zamqp.zope import lifecycle
from zamqp.zope import settings

#: The state of a configured consumer that no thread runs.
NOT_STARTED = 'not started'
#: The state of a configured consumer turned off in its configuration
#: (a spec whose ``enabled`` is false): it does not count for health.
DISABLED = 'disabled'
#: The state a consumer must be in for the health check to pass.
CONSUMING = 'consuming'
#: What ``ConsumerRow.backlog`` counts (shown on the pages).
BACKLOG_MEANING = ('messages the broker delivered to this process that '
                   'no handler has begun yet (prefetched)')
_PREFIX = 'zamqp-consumer-'


class ConsumerRow:
    """One consumer, as plain values.

    ``name``: the ZCML name (or, for ``source == 'code'``, the thread
    name without ``zamqp-consumer-``); ``source``: ``'zcml'`` or
    ``'code'``; ``state``: ``starting``, ``consuming``, ``reconnecting``,
    ``stopped``, ``failed``, ``not started`` or ``disabled`` (its
    configuration turns it off); ``alive``: its thread
    runs; ``broker``: ``host:port[,host:port...]/vhost``; ``user``;
    ``exchange`` and ``exchange_type``; ``queue``: the queue name on the
    broker (a broadcast consumer's ends in its own uuid; None before it
    started); ``shared``, ``ack``, ``prefetch``; one attribute per
    counter of ``zamqp.status.COUNTERS`` (``handled``, ``refused``,
    ``failed``, ``retried``, ``dead_lettered``, ``dropped``,
    ``reconnects``, ``crashes``, ``timeouts``; 0 before it started);
    ``restarts`` (by the lifecycle's supervisor); ``backlog`` (see
    BACKLOG_MEANING; None when no thread runs); ``busy``: a handler
    runs now; ``last_error`` (scrubbed text or None); ``since``:
    ``time.time()`` when the state began (None when not started).
    """

    def __init__(self, **values):
        self.__dict__.update(values)

    @property
    def consuming(self):
        return self.state == CONSUMING

    def as_dict(self):
        return dict(self.__dict__)

    def __repr__(self):
        return f'<ConsumerRow {self.name!r} {self.state}>'


class ProducerRow:
    """One producer, as plain values.

    ``name``; ``source``: ``'zcml'`` or ``'events'``; ``state``:
    ``idle`` (not connected yet: it connects on its first publish),
    ``connected``, ``disconnected`` (the connection was dropped; the
    next publish reconnects; so after ``close()``), ``down`` (the broker
    could not be reached: messages wait, a keeper thread retries) or
    ``closing`` (``close()`` runs) -- as the
    producer last knew it: a producer does not notice a lost connection
    before it uses it; ``broker``, ``user``, ``exchange``,
    ``exchange_type``, ``routing_key``; ``confirm``: ``'windowed'``
    (default), ``'each'`` (confirm=True) or ``'off'``; ``unconfirmed``:
    messages sent or waiting to be sent that the broker has not
    confirmed yet.
    """

    def __init__(self, **values):
        self.__dict__.update(values)

    def as_dict(self):
        return dict(self.__dict__)

    def __repr__(self):
        return f'<ProducerRow {self.name!r} {self.state}>'


class StatusReport:
    """The consumers and producers of this process at time ``taken``.

    ``consumers_enabled``: False when ``ZAMQP_CONSUMERS=off`` or
    zope.conf keep the configured consumers off. ``healthy``: every
    configured consumer consumes (True with none configured, and while
    consumers are kept off on purpose; a disabled consumer does not
    count); ``unhealthy`` lists the rows
    that fail that test. Consumers started by code outside the
    configuration are shown but do not count for ``healthy``.
    """

    def __init__(self, consumers, producers, consumers_enabled, taken):
        self.consumers = consumers
        self.producers = producers
        self.consumers_enabled = consumers_enabled
        self.taken = taken

    @property
    def configured(self):
        return [row for row in self.consumers if row.source == 'zcml']

    @property
    def unhealthy(self):
        if not self.consumers_enabled:
            return []
        return [row for row in self.configured
                if not row.consuming and row.state != DISABLED]

    @property
    def healthy(self):
        return not self.unhealthy

    def health_text(self):
        """The body of the health view: a first line ``OK`` or
        ``UNHEALTHY``, then one line per configured consumer, ``name:
        state``. Names and states only: no broker, user or error."""
        if not self.consumers_enabled:
            lines = ['OK', 'consumers kept off by configuration']
        else:
            lines = ['OK' if self.healthy else 'UNHEALTHY']
            if not self.configured:
                lines.append('no consumers configured')
            lines += [f'{row.name}: {row.state}' for row in self.configured]
        return '\n'.join(lines) + '\n'

    def as_dict(self):
        return dict(consumers=[row.as_dict() for row in self.consumers],
                    producers=[row.as_dict() for row in self.producers],
                    consumers_enabled=self.consumers_enabled,
                    healthy=self.healthy, taken=self.taken)


def gather():
    """A StatusReport of this process now (see the module docstring).

    Never raises for one odd consumer or producer: what cannot be read
    is shown as None. Cheap: no broker round trip, no lock held for
    long (each consumer's status lock, the lifecycle lock once).
    """
    return StatusReport(consumer_rows(), producer_rows(),
                        settings.consumers_enabled(), time.time())


def consumer_rows():
    """ConsumerRows: the configured consumers by name, then the
    consumers started by code, by name."""
    specs = dict(zope.component.getUtilitiesFor(IConsumerSpec))
    started = lifecycle.status()
    threads = [t for t in threading.enumerate()
               if isinstance(t, AMQPThread)]
    rows, used = [], set()
    for name in sorted(set(specs) | set(started)):
        spec = specs.get(name)
        thread = _thread_of(name, spec, threads, used)
        rows.append(_consumer_row(name, 'zcml', spec, thread,
                                  started.get(name)))
    others = [t for t in threads if id(t) not in used and t.is_alive()]
    for thread in sorted(others, key=lambda t: t.name):
        name = thread.name
        if name.startswith(_PREFIX):
            name = name[len(_PREFIX):]
        rows.append(_consumer_row(name, 'code', None, thread, None))
    return rows


def _thread_of(name, spec, threads, used):
    """The live AMQPThread the lifecycle started for consumer ``name``
    (named ``zamqp-consumer-<name>``, on the spec's exchange and queue);
    the newest one if a restart left an old one."""
    found = None
    for thread in threads:
        consumer = thread.consumer
        if thread.name != _PREFIX + name or not thread.is_alive():
            continue
        if spec is not None and (
                consumer.queue != spec.queue
                or consumer.props.exchange != spec.props.exchange):
            continue
        found = thread
    if found is not None:
        used.add(id(found))
    return found


def _consumer_row(name, source, spec, thread, status):
    consumer = thread.consumer if thread is not None else None
    if consumer is not None and status is None:
        status = consumer.status()
    props = (consumer or spec).props
    options = spec.options if spec is not None else {}
    if status:
        state = status['state']
    elif spec is not None and not getattr(spec, 'enabled', True):
        state = DISABLED
    else:
        state = NOT_STARTED
    values = dict(
        name=name, source=source, state=state,
        alive=bool(status.get('alive', thread is not None)) if status
        else False,
        exchange=props.exchange, exchange_type=props.type,
        queue=consumer.queue_name if consumer is not None else None,
        shared=consumer.shared if consumer is not None
        else bool(options.get('shared')),
        ack=consumer.ack if consumer is not None else options.get('ack'),
        prefetch=consumer.prefetch if consumer is not None
        else options.get('prefetch'),
        restarts=status.get('restarts', 0) if status else 0,
        backlog=_backlog(consumer),
        busy=bool(consumer.busy) if consumer is not None else False,
        last_error=scrub(status.get('last_error'), props) if status
        else None,
        since=status.get('since') if status else None,
        **broker(props))
    for counter in COUNTERS:
        values[counter] = status.get(counter, 0) if status else 0
    return ConsumerRow(**values)


def _backlog(consumer):
    """Messages delivered to ``consumer`` that no handler began yet
    (``zamqp.metrics``' backlog of a consumer)."""
    if consumer is None:
        return None
    return metrics.snapshot(consumer).backlog


def producer_rows():
    """ProducerRows: the ``<zamqp:producer>`` utilities by name, then
    the shared producers of AMQPEvent."""
    rows = [_producer_row(name, 'zcml', producer) for name, producer in
            sorted(zope.component.getUtilitiesFor(IProducer),
                   key=lambda item: item[0])]
    shared = list(getattr(events, '_producers', {}).values())
    for producer in sorted(shared, key=lambda p: (p.queue, p.props.exchange)):
        rows.append(_producer_row(producer.queue, 'events', producer))
    return rows


def _producer_row(name, source, producer):
    props = producer.props
    info = producer_status(producer)
    return ProducerRow(
        name=name, source=source, exchange=props.exchange,
        exchange_type=props.type,
        routing_key=getattr(producer, 'routing_key', None),
        confirm={None: 'windowed', True: 'each', False: 'off'}.get(
            getattr(producer, 'confirm', None), 'windowed'),
        state=info['state'], unconfirmed=info['unconfirmed'],
        **broker(props))


def producer_status(producer):
    """``{'state': ..., 'unconfirmed': ...}`` of a producer (see
    ProducerRow and AMQPProducer.status()); Nones for a producer without
    ``status()``."""
    if not callable(getattr(producer, 'status', None)):
        return dict(state=None, unconfirmed=None)
    if not hasattr(producer, 'props'):     # not an AMQPProducer
        info = producer.status()
        return dict(state=info.get('state'),
                    unconfirmed=info.get('unconfirmed'))
    found = metrics.snapshot(producer)
    return dict(state=found.state, unconfirmed=found.backlog)


def client_names():
    """``id(obj)`` -> the name this report shows a producer or consumer
    under (the ZCML name), for ``zamqp.metrics.collect(names=...)``."""
    names = {}
    specs = dict(zope.component.getUtilitiesFor(IConsumerSpec))
    threads = [t for t in threading.enumerate()
               if isinstance(t, AMQPThread)]
    used = set()
    for name in sorted(set(specs) | set(lifecycle.status())):
        thread = _thread_of(name, specs.get(name), threads, used)
        if thread is not None:
            names[id(thread.consumer)] = name
    for name, producer in zope.component.getUtilitiesFor(IProducer):
        names[id(producer)] = name
    return names


def broker(props):
    """``broker`` (``host:port[,host:port...]/vhost``) and ``user`` of
    AMQPProps: what an operator needs to find the broker, never the
    password."""
    return dict(broker=f"{','.join(props.addresses)}/{props.virtual_host}",
                user=props.user)


#: The texts of props that must never be shown, and ``text`` with them
#: replaced by ``***``: the same as zamqp.metrics'.
secrets = metrics.secrets
scrub = metrics.scrub
