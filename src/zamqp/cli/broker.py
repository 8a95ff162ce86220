"""``zamqp check``, ``zamqp status`` and ``zamqp topology``.

How ``check`` tests permissions without changing anything
---------------------------------------------------------

AMQP 0-9-1 cannot ask the broker for a user's permissions, and most
methods that need one change something (a declare creates, a bind
binds, a publish routes, a consume takes messages). RabbitMQ checks the
permission of a method before anything else, so each probe is the
method the worker would send, made invalid in a way the broker detects
only *after* the permission check and *before* acting:

configure (exchange)
    ``exchange.declare`` with ``alternate-exchange`` of a non-text type:
    403 ACCESS_REFUSED if refused; otherwise 406 PRECONDITION_FAILED
    ("invalid type" for a missing exchange, which is not created;
    "inequivalent arg 'alternate-exchange'" for an existing one, or
    "inequivalent arg 'type'" / durable: it exists with other settings,
    a conflict).
configure (queue)
    ``queue.declare`` with ``x-dead-letter-exchange`` of a non-text type:
    the same, for queues.
write (exchange)
    ``basic.publish`` with an invalid ``expiration`` ("zamqp-check"):
    403 if refused; 406 "invalid expiration" (the message is dropped,
    never routed) or 404 (no such exchange) if permitted.
write (queue), needed by ``queue.bind``
    ``queue.bind`` of the queue to an exchange that does not exist
    (a name made for the probe): 403 naming the queue if refused;
    anything else if permitted; nothing is bound.
read (exchange), needed by ``queue.bind``
    ``queue.bind`` of a queue that does not exist (``<queue>.zamqp-check-
    <random>``, a name shaped like the consumer's own queues, so that
    name-pattern permissions treat it alike) to the exchange: 403 naming
    the exchange if refused, 404 if permitted; 403 naming the made-up
    queue leaves it unknown.
read (queue)
    ``basic.consume`` with ``x-priority`` of a non-integer type: 403 if
    refused; 406 "invalid arg 'x-priority'", 404 or 405 (an exclusive
    queue of another connection) if permitted; no consumer is made.

Each probe runs on a channel of its own, which the broker's error
closes. Measured on RabbitMQ 3.10.8: no exchange, queue, binding or
consumer appears and messages waiting in a probed queue stay there,
not redelivered (test_cli). Should a broker ever accept a probe, the
line says so ("accepted": a probe declared or consumed; a consumer is
cancelled at once).
"""
import json
import re
import uuid

import click
from amqp import exceptions as amqp_errors

from zamqp.cli import Failure
from zamqp.cli import cli
from zamqp.cli import props_for
from zamqp.exceptions import ZAMQPError
from zamqp.props import EXCHANGE_TYPES

OK, REFUSED, CONFLICT, UNKNOWN = 'ok', 'refused', 'conflict', 'unknown'


def _connect(props):
    from zamqp.connection import connect
    return connect(props, 0)


def server_line(connection, props):
    info = connection.server_properties or {}

    def text(name):
        value = info.get(name)
        return value.decode() if isinstance(value, bytes) else value
    product = text('product') or 'unknown broker'
    version = text('version') or '?'
    cluster = text('cluster_name')
    where = f' (cluster {cluster})' if cluster else ''
    return (f'broker: {product} {version}{where} at {props.url()}, user '
            f'{props.user!r}, virtual host {props.virtual_host!r}')


class Probe:
    """One permission probe: ``(status, text)`` from the broker's reply
    (see the module's docstring)."""

    def __init__(self, connection):
        self.connection = connection

    def _run(self, func):
        channel = self.connection.channel()
        try:
            result = func(channel)
        except amqp_errors.ChannelError as exc:
            return exc
        finally:
            try:
                if channel.is_open:
                    channel.close()
            except Exception:
                pass
        return result

    def configure_exchange(self, name, type_, arguments=None):
        args = dict(arguments or {}, **{'alternate-exchange': 0})
        reply = self._run(lambda ch: ch.exchange_declare(
            name, type_, durable=True, auto_delete=False, arguments=args))
        return self._declared(reply, 'alternate-exchange')

    def configure_queue(self, name, flags, arguments=None):
        args = dict(arguments or {}, **{'x-dead-letter-exchange': 0})
        reply = self._run(lambda ch: ch.queue_declare(
            name, arguments=args, **flags))
        if isinstance(reply, amqp_errors.ResourceLocked):
            return OK, 'exclusive to another connection'
        return self._declared(reply, 'x-dead-letter-exchange')

    def _declared(self, reply, probe_argument):
        if isinstance(reply, amqp_errors.AccessRefused):
            return REFUSED, reply.reply_text
        if isinstance(reply, amqp_errors.PreconditionFailed):
            text = reply.reply_text or ''
            if 'invalid type' in text:
                return OK, 'does not exist (the worker would declare it)'
            if f"inequivalent arg '{probe_argument}'" in text:
                return OK, 'exists'
            return CONFLICT, text
        if isinstance(reply, Exception):
            return UNKNOWN, getattr(reply, 'reply_text', str(reply))
        return UNKNOWN, 'accepted: the broker declared it (probe not valid)'

    def write_exchange(self, name, routing_key=''):
        import amqp

        def publish(channel):
            channel.basic_publish(amqp.Message(b'', expiration='zamqp-check'),
                                  name, routing_key)
            channel.basic_qos(0, 0, False)     # waits for the broker
        reply = self._run(publish)
        if isinstance(reply, amqp_errors.AccessRefused):
            return REFUSED, reply.reply_text
        if isinstance(reply, amqp_errors.NotFound):
            return OK, 'does not exist'
        if isinstance(reply, amqp_errors.PreconditionFailed) and \
                'expiration' in (reply.reply_text or ''):
            return OK, 'permitted'
        if isinstance(reply, Exception):
            return UNKNOWN, getattr(reply, 'reply_text', str(reply))
        return UNKNOWN, 'accepted: an empty probe message was published'

    def write_queue(self, name, routing_key=''):
        fake = f'zamqp-check.{uuid.uuid4().hex}'
        reply = self._run(lambda ch: ch.queue_bind(name, fake, routing_key))
        if isinstance(reply, amqp_errors.AccessRefused) and \
                f"queue '{name}'" in (reply.reply_text or ''):
            return REFUSED, reply.reply_text
        if isinstance(reply, Exception):
            return OK, 'permitted'
        return UNKNOWN, 'accepted: bound to an exchange that should not exist'

    def read_exchange(self, name, queue, routing_key=''):
        fake = f'{queue}.zamqp-check-{uuid.uuid4().hex[:12]}'
        reply = self._run(lambda ch: ch.queue_bind(fake, name, routing_key))
        text = getattr(reply, 'reply_text', '') or ''
        if isinstance(reply, amqp_errors.AccessRefused):
            if f"exchange '{name}'" in text:
                return REFUSED, text
            return UNKNOWN, (f'not checked: the probe needs write on a queue '
                             f'named like {queue!r}.* ({text})')
        if isinstance(reply, amqp_errors.NotFound):
            return OK, 'permitted'
        if isinstance(reply, Exception):
            return UNKNOWN, text or str(reply)
        return UNKNOWN, 'accepted: a queue that should not exist was bound'

    def read_queue(self, name):
        def consume(channel):
            tag = channel.basic_consume(
                name, arguments={'x-priority': 'zamqp-check'})
            channel.basic_cancel(tag)
        reply = self._run(consume)
        if isinstance(reply, amqp_errors.AccessRefused):
            return REFUSED, reply.reply_text
        if isinstance(reply, amqp_errors.NotFound):
            return OK, 'does not exist'
        if isinstance(reply, (amqp_errors.PreconditionFailed,
                              amqp_errors.ResourceLocked)):
            return OK, 'permitted'
        if isinstance(reply, Exception):
            return UNKNOWN, getattr(reply, 'reply_text', str(reply))
        return UNKNOWN, 'accepted: a consumer was made and cancelled'

    # existence (passive declares: no permission needed, no change)

    def exchange_exists(self, name):
        reply = self._run(lambda ch: ch.exchange_declare(name, 'fanout',
                                                         passive=True))
        return not isinstance(reply, Exception)

    def queue_counts(self, name):
        """(message count, consumer count), 'exclusive' or None."""
        reply = self._run(lambda ch: ch.queue_declare(name, passive=True))
        if isinstance(reply, amqp_errors.ResourceLocked):
            return 'exclusive'
        if isinstance(reply, Exception):
            return None
        return reply.message_count, reply.consumer_count


class Plan:
    """What a config (or --exchange/--queue) would declare and use, as
    the consumers zamqp would make see it."""

    def __init__(self):
        self.exchanges = {}     # name -> (type, arguments)
        self.declared = set()   # names to declare (declare mode True)
        self.queues = {}        # name -> dict(flags, arguments, ...)
        self.binds = []         # (queue, exchange, routing key)
        self.publishes = []     # (exchange, routing key, why)
        self.consumers = []     # (consumer name, AMQPConsumer)

    def exchange(self, name, type_, arguments=None):
        self.exchanges.setdefault(name, (type_, arguments))

    @classmethod
    def from_config(cls, config):
        from zamqp.workerconfig import make_consumer
        plan = cls()
        for name, consumer_config in config.consumers.items():
            consumer = make_consumer(consumer_config,
                                     lambda body, message: None)
            plan.add_consumer(name, consumer)
        return plan

    def add_consumer(self, name, consumer):
        props = consumer.props
        self.consumers.append((name, consumer))
        declaration = consumer.declaration
        mode = getattr(declaration, 'declare', None)
        if mode is None:
            mode = getattr(props, 'declare', True)
        self.exchange(props.exchange, props.type,
                      getattr(props, 'exchange_arguments', None))
        named = consumer.shared or consumer.stream  # not per process
        self.queues[consumer.queue_name] = dict(
            flags=declaration.flags(), arguments=consumer.queue_arguments(),
            shared=named, consumer=name, base=consumer.queue,
            label=consumer.queue_name if named
            else f'{consumer.queue}.<random>')
        if mode is True:
            self.declared.update((props.exchange, consumer.queue_name))
            self.binds.append((consumer.queue_name, props.exchange,
                               consumer.routing_key))
        dlx = consumer.dead_letter_exchange
        if dlx:
            self.exchange(dlx, 'fanout')
            self.queues.setdefault(dlx, dict(
                flags=dict(durable=True, auto_delete=False,
                           exclusive=False),
                arguments=None, shared=True, consumer=f'{name} (dead '
                'letters)', base=dlx, dead_letters=True, label=dlx))
            if mode is True:
                self.declared.update((dlx, ))
                self.binds.append((dlx, dlx, ''))
            self.publishes.append((dlx, consumer.queue, 'dead letters'))
        if consumer.ack and consumer.max_retries and not consumer.stream:
            # (a stream reader retries in the process)
            self.publishes.append(('', consumer.queue_name, 'retries'))


def _probe_lines(probe, plan):
    results = []

    def add(status, permission, what, text):
        results.append((status, f'{status:<8} {permission:<9} {what}: '
                        f'{text}'))
    for name, (type_, arguments) in plan.exchanges.items():
        if name not in plan.declared:
            continue
        status, text = probe.configure_exchange(name, type_, arguments)
        add(status, 'configure', f'exchange {name!r} ({type_})', text)
    for name, queue in plan.queues.items():
        if name in plan.declared:
            status, text = probe.configure_queue(name, queue['flags'],
                                                 queue['arguments'])
            add(status, 'configure', f"queue {queue['label']!r}", text)
    for queue, exchange, key in plan.binds:
        base, label = plan.queues[queue]['base'], plan.queues[queue]['label']
        status, text = probe.write_queue(queue, key)
        add(status, 'write', f'queue {label!r} (to bind it)', text)
        status, text = probe.read_exchange(exchange, base, key)
        add(status, 'read', f'exchange {exchange!r} (to bind {label!r})',
            text)
    for name, queue in plan.queues.items():
        if queue.get('dead_letters'):
            continue
        status, text = probe.read_queue(name)
        add(status, 'read', f"queue {queue['label']!r} (to consume)", text)
    seen = set()
    for exchange, key, why in plan.publishes:
        if exchange in seen:
            continue
        seen.add(exchange)
        status, text = probe.write_exchange(exchange, key)
        shown = repr(exchange) if exchange else "'' (the default exchange)"
        add(status, 'write', f'exchange {shown} ({why})', text)
    return results


def _load(settings, config):
    from zamqp.workerconfig import load
    return load(config, default_url=settings.url)


def _connections(settings, config, exchange, type_, queue):
    """[(props, plan)] for a config file or the options."""
    if config is not None:
        if exchange or queue:
            raise Failure('give a CONFIG or --exchange/--queue, not both',
                          code=2)
        parsed = _load(settings, config)
        groups = {}
        for name, consumer in parsed.consumers.items():
            if consumer.enabled:    # a disabled one declares nothing
                groups.setdefault(consumer.connection, []).append(name)
        result = []
        for connection_name, names in groups.items():
            plan = Plan()
            from zamqp.workerconfig import make_consumer
            for name in names:
                plan.add_consumer(name, make_consumer(
                    parsed.consumers[name], lambda body, message: None))
            result.append((parsed.connections[connection_name].props, plan))
        if not result:
            result.append((parsed.connections['default'].props, Plan()))
        return result
    props = props_for(settings)
    plan = Plan()
    if exchange or queue:
        from zamqp.consumer import AMQPConsumer
        props = props_for(settings, exchange=exchange or
                          'zamqp.broadcast.fanout', type=type_)
        consumer = AMQPConsumer(queue or 'zamqp-listen', props, None,
                                routing_key='', shared=queue is not None,
                                dead_letter_exchange=None)
        plan.add_consumer('listen', consumer)
        plan.publishes.append((props.exchange, '', 'send'))
    return [(props, plan)]


def _check_options(func):
    func = click.option('--queue', '-q', default=None, metavar='NAME',
                        help='Without CONFIG: also a shared queue NAME.'
                        )(func)
    func = click.option('--type', 'type_', type=click.Choice(EXCHANGE_TYPES),
                        default='fanout', show_default=True,
                        help='The type of --exchange.')(func)
    func = click.option('--exchange', '-e', default=None, metavar='NAME',
                        help='Without CONFIG: check what send and listen '
                        'need on exchange NAME.')(func)
    return func


@cli.command()
@click.argument('config', required=False,
                type=click.Path(dir_okay=False))
@_check_options
@click.pass_obj
def check(settings, config, exchange, type_, queue):
    """Connect, show the broker's product and version, and check the
    user's configure/write/read permissions for what CONFIG (or
    --exchange/--queue) would declare and use, without changing anything
    on the broker.

    One line per check: ok, refused, conflict (exists with other
    settings) or unknown, with the broker's reply. Exit status 1 if a
    check is refused or in conflict.
    """
    bad = 0
    for props, plan in _connections(settings, config, exchange, type_,
                                    queue):
        connection = _open(props)
        try:
            click.echo(server_line(connection, props))
            for status, line in _probe_lines(Probe(connection), plan):
                click.echo(line)
                bad += status in (REFUSED, CONFLICT)
        finally:
            _close(connection)
    if bad:
        raise Failure(f'{bad} check(s) refused or in conflict (see the '
                      'lines above): grant the permissions (rabbitmqctl '
                      'set_permissions) or fix the config')


def _open(props):
    try:
        return _connect(props)
    except ZAMQPError as exc:
        raise Failure(str(exc)) from None


def _close(connection):
    try:
        connection.close()
    except Exception:
        pass


def _inventory(probe, plan):
    """What the plan declares and whether it exists: a list of dicts."""
    items = []
    for name, (type_, arguments) in plan.exchanges.items():
        items.append(dict(kind='exchange', name=name, type=type_,
                          arguments=arguments,
                          exists=probe.exchange_exists(name)))
    for name, queue in plan.queues.items():
        item = dict(kind='queue', name=queue['label'],
                    consumer=queue['consumer'],
                    shared=queue['shared'], arguments=queue['arguments'],
                    **queue['flags'])
        if not queue['shared']:
            item.update(exists=None, note='made by each consumer process '
                        f'({queue["base"]}.<random>), deleted with it')
        else:
            counts = probe.queue_counts(name)
            item['exists'] = counts is not None
            if isinstance(counts, tuple):
                item.update(messages=counts[0], consumers=counts[1])
        items.append(item)
    for queue, exchange, key in plan.binds:
        items.append(dict(kind='binding', queue=plan.queues[queue]['label'],
                          exchange=exchange, routing_key=key, exists=None,
                          note='not checked: AMQP 0-9-1 cannot list '
                          'bindings'))
    return items


def _inventories(settings, config):
    for props, plan in _connections(settings, config, None, None, None):
        connection = _open(props)
        try:
            yield props, connection, plan, _inventory(Probe(connection),
                                                      plan)
        finally:
            _close(connection)


def _exists(flag):
    return {True: 'exists', False: 'MISSING', None: '-'}[flag]


@cli.command()
@click.argument('config', type=click.Path(dir_okay=False))
@click.option('--json', 'as_json', is_flag=True,
              help='One JSON object per line instead of text.')
@click.pass_obj
def topology(settings, config, as_json):
    """What CONFIG declares (exchanges, queues, bindings, dead-letter
    exchanges) and whether each exists on the broker (passive declares:
    nothing is changed). Exit status 0 once the broker answered."""
    for props, connection, plan, items in _inventories(settings, config):
        if not as_json:
            click.echo(server_line(connection, props))
        for item in items:
            if as_json:
                click.echo(json.dumps(item, sort_keys=True))
                continue
            click.echo(_topology_line(item))


def _topology_line(item):
    if item['kind'] == 'exchange':
        args = f' arguments {item["arguments"]}' if item['arguments'] else ''
        return (f'exchange {item["name"]!r} ({item["type"]}, durable)'
                f'{args}: {_exists(item["exists"])}')
    if item['kind'] == 'queue':
        flags = ', '.join(flag for flag in ('durable', 'exclusive',
                                            'auto_delete') if item[flag])
        args = f' arguments {item["arguments"]}' if item['arguments'] else ''
        if item['exists'] is None:
            state = item['note']
        elif item['exists']:
            state = (f'exists, {item["messages"]} message(s), '
                     f'{item["consumers"]} consumer(s)'
                     if 'messages' in item else 'exists')
        else:
            state = 'MISSING'
        return (f'queue {item["name"]!r} of {item["consumer"]} ({flags})'
                f'{args}: {state}')
    return (f'binding {item["exchange"]!r} -> {item["queue"]!r} routing key '
            f'{item["routing_key"]!r}: {item["note"]}')


@cli.command()
@click.argument('config', type=click.Path(dir_okay=False))
@click.option('--json', 'as_json', is_flag=True,
              help='One JSON object per consumer instead of text.')
@click.pass_obj
def status(settings, config, as_json):
    """Per consumer of CONFIG: its exchange and queue on the broker,
    the messages waiting and the consumers attached, and the dead
    letters waiting (passive declares: nothing is changed); with
    [worker] metrics_port, also what the running worker counted (its
    /metrics page). Exit status 0 once the broker answered."""
    for props, connection, plan, items in _inventories(settings, config):
        probe = Probe(connection)
        for name, consumer in plan.consumers:
            record = dict(consumer=name, exchange=consumer.props.exchange,
                          exchange_exists=probe.exchange_exists(
                              consumer.props.exchange),
                          queue=consumer.queue if consumer.shared
                          or consumer.stream else None,
                          shared=consumer.shared)
            if consumer.stream:
                record['stream'] = True
            if consumer.shared or consumer.stream:
                counts = probe.queue_counts(consumer.queue_name)
                record['queue_exists'] = counts is not None
                if isinstance(counts, tuple):
                    record.update(messages=counts[0], consumers=counts[1])
            dlx = consumer.dead_letter_exchange
            if dlx:
                counts = probe.queue_counts(dlx)
                record['dead_letter_queue'] = dlx
                record['dead_letters'] = counts[0] if isinstance(
                    counts, tuple) else None
            if as_json:
                click.echo(json.dumps(record, sort_keys=True))
            else:
                click.echo(_status_line(record))
    parsed = _load(settings, config)
    if parsed.metrics_port is not None:
        _worker_lines(parsed, as_json)
    for name, consumer in parsed.consumers.items():
        if not consumer.enabled:
            record = dict(consumer=name, enabled=False)
            click.echo(json.dumps(record, sort_keys=True) if as_json else
                       f'{name}: not enabled (enabled = off), not checked')


#: The counters ``status`` shows from a worker's /metrics page.
WORKER_COUNTERS = ('received', 'handled', 'failed', 'refused', 'retried',
                   'dead_lettered', 'dropped', 'reconnects')
_SAMPLE = re.compile(r'^(zamqp_\w+)\{(.*)\} (\S+)$')
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def worker_metrics(text):
    """``{consumer name: {'state': ..., counter: value}}`` from the
    Prometheus text of a worker's /metrics page (zamqp.metrics)."""
    found = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if not match:
            continue
        family, labels, value = match.groups()
        labels = {k: v.replace('\\"', '"').replace('\\\\', '\\')
                  for k, v in _LABEL.findall(labels)}
        if labels.get('kind') != 'consumer':
            continue
        entry = found.setdefault(labels.get('name', ''), {})
        if family == 'zamqp_state':
            if float(value) == 1:
                entry['state'] = labels.get('state')
        elif family.endswith('_total'):
            counter = family[len('zamqp_'):-len('_total')]
            if counter in WORKER_COUNTERS:
                entry[counter] = int(float(value))
    return found


def _worker_lines(config, as_json):
    """What the running worker's /metrics endpoint says, per consumer."""
    import urllib.request
    host = config.metrics_host
    if host in ('0.0.0.0', '::', ''):
        host = '127.0.0.1'
    url = f'http://{host}:{config.metrics_port}/metrics'
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            found = worker_metrics(response.read().decode('utf-8'))
    except (OSError, ValueError) as exc:
        reason = getattr(exc, 'reason', None) or exc
        if as_json:
            click.echo(json.dumps(dict(worker=url, reachable=False,
                                       error=str(reason))))
        else:
            click.echo(f'worker at {url}: not reachable ({reason}): is '
                       'it running?')
        return
    for name, entry in found.items():
        if as_json:
            click.echo(json.dumps(dict(worker=url, consumer=name, **entry),
                                  sort_keys=True))
            continue
        counts = ', '.join(f'{counter.replace("_", "-")} '
                           f'{entry.get(counter, 0)}'
                           for counter in WORKER_COUNTERS)
        click.echo(f'{name}: worker {entry.get("state", "?")} ({url}): '
                   f'{counts}')


def _status_line(record):
    exchange = (f"exchange {record['exchange']!r} "
                f"{_exists(record['exchange_exists'])}")
    if record.get('stream'):
        queue = (f"stream {record['queue']!r}"
                 f"{'' if record.get('queue_exists') else ' MISSING'} "
                 "(its size: rabbitmqctl list_queues name messages)")
    elif record['shared']:
        if record.get('queue_exists'):
            queue = (f"shared queue {record['queue']!r}: "
                     f"{record['messages']} message(s), "
                     f"{record['consumers']} consumer(s)")
        else:
            queue = f"shared queue {record['queue']!r} MISSING"
    else:
        queue = 'a queue of its own per process'
    text = f"{record['consumer']}: {exchange}; {queue}"
    if 'dead_letter_queue' in record:
        waiting = record['dead_letters']
        text += (f"; dead letters in {record['dead_letter_queue']!r}: "
                 f"{'MISSING' if waiting is None else waiting}")
    return text
