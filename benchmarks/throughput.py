"""Throughput of zamqp against raw py-amqp on the same broker.

Publishes and consumes small pickled dicts (about 200 bytes) with zamqp
(AMQPProducer, AMQPConsumer in an AMQPThread) and with plain py-amqp, in
alternating rounds, and prints the medians and the ratio zamqp/raw for:

* publish: client-side time to publish N messages; zamqp's default
  producer (windowed publisher confirms) is timed until the broker
  confirmed the last one (``flush()``); afterwards the queue must hold
  exactly N messages (checked, not timed);
* publish(confirm=False): zamqp fire-and-forget against the same raw;
* publish(confirm=True): zamqp waiting for each confirm (N/10 messages:
  one round trip each) against raw unconfirmed publishing;
* consume(auto-ack): no_ack=True, first to last message;
* consume(ack): manual acknowledgement, prefetch 100, first to last.

Both sides pickle the same dicts on publish and unpickle every message on
consume (raw: ``pickle.loads``; zamqp: its restricted unpickler). Run::

    .venv/bin/python benchmarks/throughput.py [--messages N] [--rounds R]
        [--signed]

``--signed`` gives zamqp a secret: it signs every message it publishes
and verifies every signature it receives (raw py-amqp does neither).

Exits 1 when messages are lost or the broker fails, never because a ratio
is low (a note is printed when one is below the target).
"""
import argparse
import logging
import os
import pickle
import socket
import statistics
import sys
import threading
import time
import traceback
import uuid

import amqp
from amqp import exceptions as amqp_errors

import zamqp
from zamqp import AMQPConsumer
from zamqp import AMQPProducer
from zamqp import AMQPProps
from zamqp import AMQPThread

DEFAULT_URL = 'amqp://guest:guest@127.0.0.1:5672/'
TARGET = 0.9
CONTENT_TYPE = 'application/x-python-serialize'
PROTOCOL = pickle.DEFAULT_PROTOCOL
#: Seconds without progress after which a consumer counts as stuck.
STALL = 10.0
MODES = ('publish', 'publish(confirm=False)', 'publish(confirm=True)',
         'consume(auto-ack)', 'consume(ack)')
SHORT = dict(zip(MODES, ('publish', 'fire&forget', 'confirm=True',
                         'auto-ack', 'ack')))
#: Lower targets for the publish modes (raw publishes without confirms).
TARGETS = {'publish': 0.8, 'publish(confirm=True)': None}


class Lost(Exception):
    """Messages did not arrive where and as often as they should."""


def payload(i):
    """The dict sent as message ``i``: about 200 bytes pickled."""
    return {'id': i, 'name': 'x' * 110, 'values': list(range(20))}


class Bench:

    def __init__(self, url, messages, prefetch=100, secret=None):
        self.url = url
        self.n = messages
        self.prefetch = prefetch
        self.run_id = uuid.uuid4().hex[:10]
        self.exchange = f'zamqp.bench.{self.run_id}'
        self.props = AMQPProps(url=url, exchange=self.exchange,
                               type='direct', secret=secret)
        self.objects = [payload(i) for i in range(messages)]
        self.checksum = sum(range(messages))
        self.queues = []
        self.admin = self.raw_connection()
        self.admin_channel = self.admin.channel()
        self.admin_channel.exchange_declare(
            self.exchange, 'direct', durable=True, auto_delete=False)

    # broker helpers

    def raw_connection(self):
        props = self.props if hasattr(self, 'props') else AMQPProps(
            url=self.url)
        conn = amqp.Connection(
            host=props.address, userid=props.user, password=props.password,
            virtual_host=props.virtual_host, ssl=props.ssl,
            connect_timeout=props.connect_timeout)
        conn.connect()
        return conn

    def new_queue(self, what):
        """Declare a queue bound to the exchange by its own name.

        The flags are those of a shared AMQPConsumer (durable, not
        auto-delete), so both consumers can consume it.
        """
        name = f'{self.exchange}.{what}.{len(self.queues)}'
        self.queues.append(name)
        self.admin_channel.queue_declare(
            name, durable=True, exclusive=False, auto_delete=False)
        self.admin_channel.queue_bind(name, self.exchange, name)
        return name

    def depth(self, queue):
        return self.admin_channel.queue_declare(
            queue, passive=True).message_count

    def wait_depth(self, queue, expected, timeout=STALL):
        """Wait until ``queue`` holds ``expected`` messages, or raise Lost."""
        deadline = time.monotonic() + timeout
        while True:
            depth = self.depth(queue)
            if depth == expected:
                return
            if depth > expected or time.monotonic() > deadline:
                raise Lost(f'queue {queue} holds {depth} messages, '
                           f'expected {expected}')
            time.sleep(0.02)

    def fill(self, queue):
        """Pre-fill ``queue`` with N messages as zamqp publishes them."""
        with AMQPProducer(queue, self.props) as producer:
            for obj in self.objects:
                producer(obj)
        self.wait_depth(queue, self.n)

    def cleanup(self):
        """Delete this run's queues and exchange, on a fresh connection."""
        try:
            self.admin.close()
        except Exception:
            pass
        conn = self.raw_connection()
        try:
            channel = conn.channel()
            dead = self.exchange + '.dead'  # acking consumers' dead letters
            for queue in self.queues + [dead]:
                try:
                    channel.queue_delete(queue)
                except amqp_errors.NotFound:
                    channel = conn.channel()
            channel.exchange_delete(self.exchange)
            channel.exchange_delete(dead)
        finally:
            conn.close()

    # publish

    def publish_raw(self):
        queue = self.new_queue('pub-raw')
        conn = self.raw_connection()
        try:
            channel = conn.channel()
            publish, dumps, exchange = channel.basic_publish, pickle.dumps, \
                self.exchange
            cpu, start = time.process_time(), time.perf_counter()
            for obj in self.objects:
                publish(amqp.Message(dumps(obj, PROTOCOL),
                                     content_type=CONTENT_TYPE,
                                     delivery_mode=1),
                        exchange, queue)
            elapsed = time.perf_counter() - start
            cpu = time.process_time() - cpu
        finally:
            conn.close()
        self.wait_depth(queue, self.n)
        self.admin_channel.queue_delete(queue)
        return self.n / elapsed, cpu / self.n

    def publish_zamqp(self, confirm=None, messages=None):
        """zamqp's producer; the default one (windowed confirms) is timed
        until its last confirm arrived (``flush``)."""
        queue = self.new_queue('pub-zamqp')
        producer = AMQPProducer(queue, self.props, confirm=confirm)
        objects = self.objects[:messages]
        try:
            producer('warm-up')         # connect outside the timing
            producer.flush()
            cpu, start = time.process_time(), time.perf_counter()
            for obj in objects:
                producer(obj)
            producer.flush()
            elapsed = time.perf_counter() - start
            cpu = time.process_time() - cpu
        finally:
            producer.close()
        self.wait_depth(queue, len(objects) + 1)
        self.admin_channel.queue_delete(queue)
        return len(objects) / elapsed, cpu / len(objects)

    # consume

    def consume_raw(self, ack):
        queue = self.new_queue('ack-raw' if ack else 'auto-raw')
        self.fill(queue)
        counter = Counter(self.n)
        conn = self.raw_connection()
        try:
            channel = conn.channel()
            if ack:
                channel.basic_qos(0, self.prefetch, False)
            loads, seen = pickle.loads, counter.seen

            def on_message(message):
                seen(loads(message.body))
                if ack:
                    channel.basic_ack(message.delivery_tag)

            channel.basic_consume(queue, callback=on_message, no_ack=not ack)
            idle, last = 0, 0
            while not counter.done.is_set():
                try:
                    conn.drain_events(timeout=1)
                except socket.timeout:      # a second without any frame
                    idle = idle + 1 if counter.count == last else 0
                    last = counter.count
                    if idle >= STALL:
                        break
        finally:
            conn.close()
        return counter.rate(queue, self.checksum)

    def consume_zamqp(self, ack):
        queue = self.new_queue('ack-zamqp' if ack else 'auto-zamqp')
        self.fill(queue)
        counter = Counter(self.n)
        consumer = AMQPConsumer(queue, self.props, counter.seen,
                                shared=True, ack=ack,
                                prefetch=self.prefetch if ack else None)
        run_until_done(consumer, counter)
        return counter.rate(queue, self.checksum)


def run_until_done(consumer, counter):
    """Run ``consumer`` in an AMQPThread until ``counter`` has seen every
    message (or stalled), then stop it; its error, if it failed to start,
    is raised."""
    counter.on_done = consumer.stop
    thread = AMQPThread(consumer)
    thread.start()
    try:
        if consumer.error is not None:
            raise consumer.error
        counter.wait()
    finally:
        thread.stop()


class Counter:
    """Counts decoded messages; times the first to the last.

    The time is wall-clock time, and the CPU time of the whole process
    (the waiting main thread uses none).
    """

    def __init__(self, n):
        self.n = n
        self.count = 0
        self.total = 0
        self.first = self.last = self.cpu = None
        self.done = threading.Event()
        self.on_done = None

    def seen(self, body):
        self.total += body['id']
        self.count += 1
        if self.count == 1:
            self.first, self.cpu = time.perf_counter(), time.process_time()
        elif self.count == self.n:
            self.last, self.cpu = time.perf_counter(), \
                time.process_time() - self.cpu
            self.done.set()
            if self.on_done is not None:
                self.on_done()

    def wait(self):
        last = -1
        while not self.done.wait(STALL):
            if self.count == last:
                return
            last = self.count

    def rate(self, queue, checksum):
        if self.count != self.n or self.total != checksum:
            raise Lost(f'consumer of {queue} got {self.count} of {self.n} '
                       f'messages (id checksum {self.total}, expected '
                       f'{checksum})')
        return (self.n - 1) / (self.last - self.first), \
            self.cpu / (self.n - 1)


def run(args):
    size = len(pickle.dumps(payload(args.messages - 1), PROTOCOL))
    print(f'zamqp ({os.path.dirname(zamqp.__file__)}) vs raw py-amqp '
          f'{amqp.__version__}, {AMQPProps(url=args.url).url()}\n'
          f'{args.messages} messages of {size} bytes (pickled dict) per '
          f'measurement, {args.rounds} rounds; per round: raw/zamqp msg/s '
          'and ratio')
    secret = 'benchmark-secret-' + uuid.uuid4().hex if args.signed \
        else None
    if secret:
        print('zamqp signs every message (HMAC-SHA256) and checks every '
              'signature; raw py-amqp does neither')
    bench = Bench(args.url, args.messages, secret=secret)
    tests = {
        'publish': (bench.publish_raw, bench.publish_zamqp),
        'publish(confirm=False)': (
            bench.publish_raw, lambda: bench.publish_zamqp(confirm=False)),
        # one round trip per message: a tenth of the messages
        'publish(confirm=True)': (
            lambda: bench.publish_raw(), lambda: bench.publish_zamqp(
                confirm=True, messages=max(2, args.messages // 10))),
        'consume(auto-ack)': (lambda: bench.consume_raw(False),
                              lambda: bench.consume_zamqp(False)),
        'consume(ack)': (lambda: bench.consume_raw(True),
                         lambda: bench.consume_zamqp(True)),
    }
    # results[mode][side]: one (msg/s, CPU seconds per message) per round
    modes = [m for m in MODES if m.startswith('publish')] \
        if args.publish_only else MODES
    results = {mode: {'raw': [], 'zamqp': []} for mode in modes}
    try:
        for rnd in range(args.rounds):
            order = ('raw', 'zamqp') if rnd % 2 == 0 else ('zamqp', 'raw')
            line = []
            for mode in modes:
                for side in order:
                    test = tests[mode][side == 'zamqp']
                    results[mode][side].append(test())
                raw_rate = results[mode]['raw'][-1][0]
                zamqp_rate = results[mode]['zamqp'][-1][0]
                line.append(f'{SHORT[mode]} {raw_rate:.0f}/{zamqp_rate:.0f}'
                            f' {zamqp_rate / raw_rate:.2f}')
            print(f'round {rnd + 1}, {order[0]:<5} first | '
                  + ' | '.join(line), flush=True)
    finally:
        bench.cleanup()
    return results


def report(results):
    """Print the table; return the throughput ratios by mode."""
    print()
    print(f'{"":<22}  {"throughput, msg/s":^22}   {"client CPU, us/msg":^20}')
    print(f'{"":<22}  {"raw":>7} {"zamqp":>7} {"ratio":>6}   '
          f'{"raw":>6} {"zamqp":>6} {"ratio":>6}   per-round ratios')
    ratios = {}
    modes = [m for m in MODES if m in results]
    for mode in modes:
        raw, zamqp = results[mode]['raw'], results[mode]['zamqp']
        rate_raw = statistics.median(rate for rate, cpu in raw)
        rate_zamqp = statistics.median(rate for rate, cpu in zamqp)
        cpu_raw = statistics.median(cpu for rate, cpu in raw) * 1e6
        cpu_zamqp = statistics.median(cpu for rate, cpu in zamqp) * 1e6
        ratios[mode] = rate_zamqp / rate_raw
        rounds = ' '.join(f'{z[0] / r[0]:.2f}' for r, z in zip(raw, zamqp))
        print(f'{mode:<22}  {rate_raw:>7,.0f} {rate_zamqp:>7,.0f} '
              f'{ratios[mode]:>6.2f}   {cpu_raw:>6.1f} {cpu_zamqp:>6.1f} '
              f'{cpu_raw / cpu_zamqp:>6.2f}   {rounds}')
    print('Medians over the rounds. ratio = zamqp/raw throughput; CPU '
          'ratio = raw/zamqp\nclient CPU per message (the ratio if the '
          'client CPU were the only limit).')
    low = [f'{mode} ({TARGETS.get(mode, TARGET)})' for mode in modes
           if TARGETS.get(mode, TARGET) is not None
           and ratios[mode] < TARGETS.get(mode, TARGET)]
    if low:
        print(f'NOTE: throughput ratio below the target for '
              f'{", ".join(low)}')
    print(', '.join(f'{mode} ratio {ratios[mode]:.2f}' for mode in modes))
    return ratios


def parser_for(doc, rounds):
    """An argument parser with the options every benchmark takes."""
    parser = argparse.ArgumentParser(description=doc.split('\n')[0])
    parser.add_argument('--messages', type=int, default=20000,
                        help='messages per measurement (default 20000)')
    parser.add_argument('--rounds', type=int, default=rounds,
                        help=f'rounds, alternating the order (default '
                        f'{rounds})')
    parser.add_argument('--url', default=os.environ.get('ZAMQP_TEST_URL')
                        or DEFAULT_URL,
                        help='broker URL (default $ZAMQP_TEST_URL or '
                        f'{DEFAULT_URL})')
    return parser


def main(argv=None):
    parser = parser_for(__doc__, rounds=5)
    parser.add_argument('--signed', action='store_true',
                        help='zamqp with a secret: signs and verifies')
    parser.add_argument('--publish-only', action='store_true',
                        help='only the publish measurements')
    args = parser.parse_args(argv)
    if args.messages < 2 or args.rounds < 1:
        parser.error('need --messages >= 2 and --rounds >= 1')
    return execute(run, report, args)


def execute(run, report, args):
    """Run and report; return the exit status (1: lost messages or an
    error, never a low ratio)."""
    logging.basicConfig(level=logging.WARNING,
                        format='%(levelname)s %(name)s: %(message)s')
    try:
        results = run(args)
    except Lost as exc:
        print(f'ERROR: lost messages: {exc}', file=sys.stderr)
        return 1
    except Exception:
        traceback.print_exc()
        print('ERROR: the benchmark failed', file=sys.stderr)
        return 1
    report(results)
    return 0


if __name__ == '__main__':
    sys.exit(main())
