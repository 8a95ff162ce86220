"""Demo: a broadcast message and a zope event reach separate processes.

``python -m zamqp.demo [NAME ...]`` starts one listener process per NAME
(default: alice and bob). Each listener consumes broadcast messages
(AMQPConsumer on a fanout exchange) and remote zope events (AMQPConsumer
with AMQPEventCallback on a second exchange) and prints what it receives.
Once all listeners are ready, the demo publishes one message with
AMQPProducer and notifies one ``AMQPEvent`` carrying a ``Greeting``. Each
listener exits when it got both, the demo exits 0 when every listener did.

``python -m zamqp.demo catch-up`` shows a durable broadcast instead: a
stream reader process (alice) gets one message and stops; three more are
published while she is away; started again, she catches up with exactly
those three, in order, from the position she saved (zamqp.streams).

The broker URL is $ZAMQP_URL, else $ZAMQP_TEST_URL, else
amqp://guest:guest@127.0.0.1:5672/. Both exchanges are named after the
run, so runs do not interfere, and are deleted at the end.
"""
import dataclasses
import logging
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid

import zope.event

from zamqp import AMQPConsumer
from zamqp import AMQPEvent
from zamqp import AMQPEventCallback
from zamqp import AMQPProducer
from zamqp import AMQPProps
from zamqp import AMQPThread
from zamqp import ZAMQPError
from zamqp import events

DEFAULT_URL = 'amqp://guest:guest@127.0.0.1:5672/'
LISTENERS = ('alice', 'bob')
NEWS = 'news'               # queue name (routing key) of broadcast messages
GREETINGS = 'greetings'     # queue name (routing key) of remote events
READY_TIMEOUT = 20.0        # seconds for all listeners to start consuming
RECEIVE_TIMEOUT = 15.0      # seconds a listener waits for both messages


@dataclasses.dataclass
class Greeting:
    """The demo's event: notified in one process, received in the others."""

    sender: str
    text: str


def broker_url():
    return (os.environ.get('ZAMQP_URL') or os.environ.get('ZAMQP_TEST_URL')
            or DEFAULT_URL)


def props_for(run):
    """Props of the run's broadcast exchange and of its event exchange."""
    url = broker_url()
    return (AMQPProps(url=url, exchange=f'zamqp.demo.{run}.broadcast'),
            AMQPProps(url=url, exchange=f'zamqp.demo.{run}.events'))


# The listener process

def listen(name, run):
    """Consume both exchanges of ``run``; 0 once a broadcast message and
    a Greeting event arrived, 1 on timeout, 2 if consuming failed."""
    out = threading.Lock()
    got = {}
    done = threading.Event()

    def say(text):
        with out:
            sys.stdout.write(f'[{name}] {text}\n')
            sys.stdout.flush()

    def received(kind, text):
        say(text)
        with out:
            got[kind] = True
            if len(got) == 2:
                done.set()

    def on_message(message):
        received('broadcast', f'broadcast message received: {message!r}')

    def on_event(event):
        if isinstance(event, Greeting):
            received('event', f'zope event received: {event!r}')

    logging.basicConfig(format=f'[{name}] %(levelname)s %(message)s')
    news_props, greeting_props = props_for(run)
    zope.event.subscribers.append(on_event)
    threads = [
        AMQPThread(AMQPConsumer(NEWS, news_props, on_message)),
        AMQPThread(AMQPConsumer(GREETINGS, greeting_props,
                                AMQPEventCallback(), allow=[Greeting])),
    ]
    try:
        for thread in threads:
            thread.start()
            if thread.consumer.error is not None:
                raise thread.consumer.error
        say(f'ready (pid {os.getpid()}): consuming broadcast messages and '
            'Greeting events')
        if not done.wait(RECEIVE_TIMEOUT):
            missing = [k for k in ('broadcast', 'event') if k not in got]
            say(f'timed out after {RECEIVE_TIMEOUT:.0f} s, no '
                f'{" and no ".join(missing)} received')
            return 1
        say('got both, exiting')
        return 0
    except ZAMQPError as exc:
        say(f'cannot consume: {exc}')
        return 2
    finally:
        for thread in threads:
            thread.stop()


def stream_props(run):
    return AMQPProps(url=broker_url(), exchange=f'zamqp.demo.{run}.stream')


def read(name, run, offsets, count):
    """Read the run's stream as reader ``name`` (position in
    ``offsets``) until ``count`` messages came; 0 then, 1 on timeout."""
    got = []
    done = threading.Event()

    def say(text):
        sys.stdout.write(f'[{name}] {text}\n')
        sys.stdout.flush()

    def on_message(body, message):
        say(f'stream message at offset '
            f'{message.headers["x-stream-offset"]}: {body!r}')
        got.append(body)
        if len(got) >= count:
            done.set()

    logging.basicConfig(format=f'[{name}] %(levelname)s %(message)s')
    thread = AMQPThread(AMQPConsumer(
        f'zamqp.demo.{run}.stream', stream_props(run), on_message,
        stream=True, reader=name, offsets=offsets, pass_message=True))
    try:
        thread.start()
        say(f'ready (pid {os.getpid()}): reading the stream from '
            f'position {thread.consumer.status()["position"]}')
        if not done.wait(RECEIVE_TIMEOUT):
            say(f'timed out with {len(got)} of {count} messages')
            return 1
        return 0
    except ZAMQPError as exc:
        say(f'cannot read: {exc}')
        return 2
    finally:
        thread.stop()
        say(f'stopped at position {thread.consumer.status()["position"]}')


def catch_up():
    """The stream demo: a reader that was away gets what it missed."""
    run = uuid.uuid4().hex[:8]
    props = stream_props(run)
    stream = f'zamqp.demo.{run}.stream'
    offsets = tempfile.mkdtemp(prefix='zamqp-demo-')
    print(f'zamqp demo (catch-up), run {run}, broker {props.url()}')
    producer = AMQPProducer(stream, props, confirm=True)
    try:
        print('\n1. alice starts reading the stream and gets one message')
        alice = Listeners(['alice'], run, ['read', 'alice', run, offsets,
                                           '1'])
        if not alice.wait_ready():
            print('\nFAILED: alice was not ready')
            return 1
        producer('news 1')
        if alice.wait_ended() != {'alice': 0}:
            print('\nFAILED: alice did not get news 1')
            return 1
        print('\n2. alice is away; three messages are published')
        for n in (2, 3, 4):
            producer(f'news {n}')
            print(f'   published news {n} (confirmed)')
        print('\n3. alice starts again, from her saved position')
        alice = Listeners(['alice'], run, ['read', 'alice', run, offsets,
                                           '3'])
        if alice.wait_ended() != {'alice': 0}:
            print('\nFAILED: alice did not catch up')
            return 1
        print('\nOK: alice caught up with the 3 messages she missed, in '
              'order.')
        return 0
    except ZAMQPError as exc:
        print(f'\nFAILED: {exc}', file=sys.stderr)
        return 2
    finally:
        try:
            channel = producer.connection.channel
            channel.queue_delete(stream)
            channel.queue_delete(f'{props.exchange}.dead')
            channel.exchange_delete(f'{props.exchange}.dead')
            channel.exchange_delete(props.exchange)
            print('Deleted the stream and the exchanges of this run.')
        except Exception as exc:
            print(f'Could not delete the stream {stream}: {exc}',
                  file=sys.stderr)
        producer.close()
        shutil.rmtree(offsets, ignore_errors=True)


# The orchestrator

class Listeners:
    """Listener processes whose output lines arrive on one queue."""

    def __init__(self, names, run, argv=None):
        self.names = names
        self.lines = queue.Queue()
        self.ready = set()
        self.ended = set()
        env = dict(os.environ, PYTHONUNBUFFERED='1')
        self.procs = {}
        for name in names:
            proc = self.procs[name] = subprocess.Popen(
                [sys.executable, '-m', 'zamqp.demo',
                 *(argv or ['listen', name, run])],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, text=True, env=env)
            threading.Thread(target=self._read, args=(name, proc.stdout),
                             daemon=True).start()

    def _read(self, name, stream):
        for line in stream:
            self.lines.put((name, line.rstrip('\n')))
        self.lines.put((name, None))

    def relay(self, until, timeout):
        """Print listener output until ``until()``; False on timeout."""
        deadline = time.monotonic() + timeout
        while not until():
            try:
                name, line = self.lines.get(
                    timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return False
            if line is None:
                self.ended.add(name)
                continue
            print(f'   {line}', flush=True)
            if line.startswith(f'[{name}] ready'):
                self.ready.add(name)
        return True

    def wait_ready(self):
        """True once every listener is ready."""
        self.relay(lambda: self.ready | self.ended >= set(self.names),
                   READY_TIMEOUT)
        return self.ready == set(self.names)

    def wait_ended(self):
        """Relay output until every listener ended; their exit codes."""
        self.relay(lambda: self.ended >= set(self.names),
                   RECEIVE_TIMEOUT + 5)
        return self.stop()

    def stop(self):
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        codes = {}
        for name, proc in self.procs.items():
            try:
                codes[name] = proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                codes[name] = proc.wait()
        return codes


def main(names=LISTENERS):
    run = uuid.uuid4().hex[:8]
    news_props, greeting_props = props_for(run)
    exchanges = (news_props.exchange, greeting_props.exchange)
    print(f'zamqp demo, run {run}, broker {news_props.url()}')
    print(f'Exchanges of this run: {exchanges[0]} (broadcast messages), '
          f'{exchanges[1]} (remote zope events)')
    producer = AMQPProducer(NEWS, news_props)
    try:
        producer.connection.channel     # connect now, to fail early
    except ZAMQPError as exc:
        print(f'\nFAILED: cannot use the broker: {exc}', file=sys.stderr)
        return 2
    listeners = None
    try:
        print(f'\n1. Starting {len(names)} listener processes: '
              f'{", ".join(names)}', flush=True)
        listeners = Listeners(names, run)
        if not listeners.wait_ready():
            for name in names:
                if name in listeners.ended - listeners.ready:
                    print(f'\nFAILED: {name} exited before it was ready')
                elif name not in listeners.ready:
                    print(f'\nFAILED: {name} was not ready within '
                          f'{READY_TIMEOUT:.0f} s')
            return 1
        message = 'Hello, everyone!'
        print(f'\n2. Broadcasting a message with AMQPProducer: {message!r}')
        producer(message)
        greeting = Greeting(sender=f'demo (pid {os.getpid()})',
                            text='Hi, this is a remote zope event')
        print('3. Notifying a remote zope event: zope.event.notify('
              f'AMQPEvent({GREETINGS!r}, props, {greeting!r}))\n')
        zope.event.notify(AMQPEvent(GREETINGS, greeting_props, greeting))
        codes = listeners.wait_ended()
        failed = [name for name in names if codes[name] != 0]
        if failed:
            print(f'\nFAILED: {", ".join(failed)} did not receive both '
                  f'(exit codes: {codes})')
            return 1
        print(f'\nOK: every listener ({", ".join(names)}) received the '
              'broadcast message and the zope event.')
        return 0
    except ZAMQPError as exc:
        print(f'\nFAILED: {exc}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print('\nInterrupted.')
        return 130
    finally:
        if listeners is not None:
            listeners.stop()
        cleanup(producer, exchanges)


def cleanup(producer, exchanges):
    """Delete the run's exchanges, close the producers' connections."""
    try:
        channel = producer.connection.channel
        for exchange in exchanges:
            channel.exchange_delete(exchange)
        print('Deleted the exchanges of this run.')
    except Exception as exc:
        print(f'Could not delete the exchanges {", ".join(exchanges)}: '
              f'{exc}', file=sys.stderr)
    finally:
        producer.close()
        events.close_producers()


def cli(argv):
    if argv[:1] == ['listen'] and len(argv) == 3:
        return listen(argv[1], argv[2])
    if argv[:1] == ['read'] and len(argv) == 5 and argv[4].isdigit():
        return read(argv[1], argv[2], argv[3], int(argv[4]))
    if argv == ['catch-up']:
        return catch_up()
    if any(arg.startswith('-') or arg in ('listen', 'read', 'catch-up')
           for arg in argv) \
            or len(set(argv)) != len(argv):
        print('usage: python -m zamqp.demo [NAME ...]\n\n'
              f'{__doc__}', file=sys.stderr)
        return 0 if argv[:1] in (['-h'], ['--help']) else 2
    return main(tuple(argv) or LISTENERS)


if __name__ == '__main__':
    # Run the imported module, so that Greeting pickles as
    # zamqp.demo.Greeting rather than __main__.Greeting.
    from zamqp import demo
    sys.exit(demo.cli(sys.argv[1:]))
