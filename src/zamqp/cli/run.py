"""``zamqp worker CONFIG``: the consumers of a config file, without Zope."""
import logging
import signal
import threading
import time

import click
import zope.event
from zope.interface import implementer

from zamqp.cli import Failure
from zamqp.cli import cli
from zamqp.interfaces import IMessageReceived

logger = logging.getLogger(__name__)


@implementer(IMessageReceived)
class MessageReceived:
    """What a worker's handler is called with, as in Zope: ``consumer``
    (the consumer's name), ``body``, ``message`` (py-amqp's) and ``site``
    (None: no Zope)."""

    site = None
    reference = None

    def __init__(self, consumer, body, message):
        self.consumer = consumer
        self.body = body
        self.message = message

    def __repr__(self):
        return f'<MessageReceived by {self.consumer!r}: {self.body!r}>'


def callback(config):
    """The ``callback(body, message)`` of a ConsumerConfig's consumer."""
    name, handler = config.name, config.handler
    if config.events:
        def notify(body, message):
            zope.event.notify(body)
        return notify

    def deliver(body, message):
        handler(MessageReceived(name, body, message))
    return deliver


def load_config(settings, path):
    from zamqp.workerconfig import load
    return load(path, default_url=settings.url)


class Worker:
    """Runs the enabled consumers of a WorkerConfig until ``stop()``."""

    def __init__(self, config):
        self.config = config
        self.threads = {}
        self.stopping = threading.Event()
        self.failed = None

    def start(self):
        from zamqp.consumer import AMQPThread
        from zamqp.status import State
        from zamqp.workerconfig import make_consumer
        for name, config in self.config.consumers.items():
            if not config.enabled:
                continue
            thread = AMQPThread(make_consumer(config, callback(config)),
                                name=f'zamqp-consumer-{name}')
            self.threads[name] = thread
            thread.start()
            if thread.consumer.state is not State.CONSUMING:
                self.stop()
                raise Failure(f'consumer {name}: '
                              f'{thread.consumer.error or "did not start"}')

    def watch(self, interval=0.2):
        """Wait until stopped or a consumer failed (a setting must
        change); return the failure text or None."""
        from zamqp.status import State
        while not self.stopping.wait(interval):
            for name, thread in self.threads.items():
                if thread.consumer.state is State.FAILED:
                    return (f'consumer {name} failed: '
                            f'{thread.consumer.status()["last_error"]}')
        return None

    def stop(self):
        self.stopping.set()
        timeout = self.config.stop_timeout
        stopped = []
        for thread in self.threads.values():
            thread.consumer.stop(timeout)   # all at once
        deadline = time.monotonic() + timeout + 0.5
        for name, thread in self.threads.items():
            for part in (thread, thread.worker):
                if part is not None:
                    part.join(max(deadline - time.monotonic(), 0.0))
            if not threading.Thread.is_alive(thread) and not (
                    thread.worker and thread.worker.is_alive()):
                stopped.append(name)
        return stopped


@cli.command()
@click.argument('config', type=click.Path(dir_okay=False))
@click.pass_obj
def worker(settings, config):
    """Run the consumers CONFIG declares until SIGTERM or SIGINT (exit
    status 0), without Zope.

    CONFIG is an INI file: [connection NAME] sections (url, user, ...:
    the attributes of <zamqp:connection>; also exchange and type, the
    defaults of its consumers), [consumer NAME] sections (handler =
    dotted.name, shared, ack, routing_key, allow, max_retries, ...: the
    attributes of <zamqp:consumer>) and an optional [worker] section
    (stop_timeout, log_level, imports, metrics_port, metrics_host: a
    Prometheus /metrics endpoint). A connection without url connects to --url.
    Exits 1 when a consumer cannot start or fails for good.
    """
    parsed = load_config(settings, config)
    if not any(c.enabled for c in parsed.consumers.values()):
        raise Failure(f'{config}: no enabled [consumer NAME] section: '
                      'nothing to run')
    from zamqp import cli as package
    level = logging.INFO if settings.verbose else \
        getattr(logging, parsed.log_level)
    package.show_log(None)
    run = Worker(parsed)
    server = _serve_metrics(parsed, run)
    previous = {sig: signal.signal(sig, lambda *a: run.stopping.set())
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        run.start()
        package.show_log(level, detailed=True)
        for name, consumer in parsed.consumers.items():
            if not consumer.enabled:
                logger.info('consumer %s: not enabled (enabled = off)', name)
        metrics = f'; metrics at {server.url}' if server else ''
        click.echo(f'zamqp: worker consuming: '
                   f'{", ".join(_describe(parsed, n) for n in run.threads)}'
                   f'{metrics}; SIGTERM or Ctrl-C stops it', err=True)
        failure = run.watch()
        began = time.monotonic()
        stopped = run.stop()
        took = time.monotonic() - began
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if server is not None:
            server.stop()
    if failure:
        raise Failure(failure)
    click.echo(f'zamqp: worker stopped {len(stopped)} of {len(run.threads)} '
               f'consumer(s) in {took:.2f} s', err=True)
    if len(stopped) < len(run.threads):
        raise Failure('some handlers were still running at the stop '
                      'deadline (stop_timeout); their messages go back to '
                      'the queue')


def _serve_metrics(config, run):
    """zamqp.metrics' endpoint, its consumers named as in the config."""
    if config.metrics_port is None:
        return None
    from zamqp import metrics

    def source():
        return metrics.collect({id(thread.consumer): name
                                for name, thread in run.threads.items()})
    try:
        return metrics.serve(config.metrics_port, config.metrics_host,
                             source)
    except OSError as exc:
        raise Failure(f'{config.path}: [worker] metrics_port: cannot serve '
                      f'on {config.metrics_host}:{config.metrics_port} '
                      f'({exc.strerror or exc}): choose a free port'
                      ) from None


def _describe(config, name):
    consumer = config.consumers[name]
    if consumer.options.get('stream'):
        kind = (f"stream {consumer.queue!r} as reader "
                f"{consumer.options.get('reader')!r}")
    elif consumer.shared:
        kind = f'shared queue {consumer.queue!r}'
    else:
        kind = 'a queue of its own'
    return f'{name} ({kind} on exchange {consumer.props.exchange!r})'
