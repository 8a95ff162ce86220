"""Stream readers: throughput against a broadcast consumer and raw py-amqp.

Measures, in one run on one broker, with the small pickled dicts of
throughput.py (about 200 bytes):

* stream: N messages read from a pre-filled stream queue by
  ``AMQPConsumer(queue, props, cb, stream=True, reader='bench',
  offsets=tmpdir, start='first')`` (a new offsets directory each round,
  so the reader begins at the first message);
* broadcast: ``AMQPConsumer(queue2, props, cb)`` (its own exclusive
  queue, ack=False) consuming N messages that a separate process
  publishes (``AMQPProducer(confirm=False)``) once it consumes: its
  rate is at most the publisher's, which is printed too;
* raw stream: plain py-amqp reading the same stream (``basic_qos(0,
  1000, False)``, ``basic_consume(arguments={'x-stream-offset':
  'first'})``, ``basic_ack(multiple=True)`` every 100 messages) as the
  reference;
* catch-up: a reader with a saved position is stopped, ``--behind``
  messages (default 100,000) are published to its stream, and it is
  started again: timed from ``start()`` until its callback has seen the
  last of them.

Every callback unpickles the message (raw: ``pickle.loads``; zamqp: its
restricted unpickler) and sums the ids, so a lost, duplicated or
undecoded message is noticed. Rounds alternate the order of the three
throughput measurements; medians are printed with the ratios
stream/broadcast and stream/raw. Run::

    .venv/bin/python benchmarks/streams.py [--messages N] [--rounds R]
        [--behind M] [--url URL]

Its exchange and queues (streams included: durable) are named
``zamqp.bench.<random>`` and deleted at the end. Exits 1 when messages
are lost or the broker fails, never because a ratio is low.
"""
import multiprocessing
import os
import pickle
import socket
import statistics
import sys
import tempfile
import time

import amqp

import zamqp
from zamqp import AMQPConsumer
from zamqp import AMQPProducer
from zamqp import AMQPProps
from zamqp import AMQPThread
from zamqp.streams import StreamDeclaration

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from throughput import PROTOCOL  # noqa: E402
from throughput import STALL  # noqa: E402
from throughput import Bench  # noqa: E402
from throughput import Counter  # noqa: E402
from throughput import Lost  # noqa: E402
from throughput import execute  # noqa: E402
from throughput import parser_for  # noqa: E402
from throughput import payload  # noqa: E402

SIDES = ('stream', 'broadcast', 'raw stream')
#: Messages the raw reader acknowledges at once (multiple=True).
RAW_ACK_EVERY = 100
RAW_PREFETCH = 1000


def publish_child(url, exchange, queue, n, ready, rate):
    """In a separate process: publish ``payload(0..n-1)`` to ``queue``
    with a fire-and-forget zamqp producer (its fastest, so that the
    publisher holds the consumer back as little as it can); set ``rate``
    to the messages per second it wrote."""
    props = AMQPProps(url=url, exchange=exchange, type='direct')
    with AMQPProducer(queue, props, confirm=False) as producer:
        producer('warm-up-not-routed', routing_key=queue + '.nowhere')
        producer.flush()
        ready.set()
        start = time.perf_counter()
        for i in range(n):
            producer(payload(i))
        producer.flush()
        rate.value = n / (time.perf_counter() - start)


class StreamBench(Bench):

    def __init__(self, url, messages, behind):
        super().__init__(url, messages)
        self.behind = behind
        self.behind_objects = [payload(i) for i in range(behind)]
        self.tmp = tempfile.TemporaryDirectory(prefix='zamqp-bench-')
        self.stream = None          # pre-filled, read by every round
        self.catchup = None         # the catch-up reader's stream
        self.catchup_offsets = os.path.join(self.tmp.name, 'catchup')
        self.catchup_position = None
        self.publish_rates = []     # of the broadcast's publisher
        self.spawn = multiprocessing.get_context('spawn')

    def new_stream(self, what):
        """Declare a stream as zamqp's reader declares it (the same
        retention), bound to the exchange by its own name."""
        name = f'{self.exchange}.{what}.{len(self.queues)}'
        self.queues.append(name)
        declaration = StreamDeclaration(name)
        self.admin_channel.queue_declare(
            name, durable=True, exclusive=False, auto_delete=False,
            arguments=declaration.arguments())
        self.admin_channel.queue_bind(name, self.exchange, name)
        return name

    def publish(self, queue, objects):
        """Publish ``objects`` with zamqp's default producer, until the
        broker confirmed the last one (a stream then holds them)."""
        with AMQPProducer(queue, self.props) as producer:
            for obj in objects:
                producer(obj)
            producer.flush()

    def setup(self):
        self.stream = self.new_stream('stream')
        self.publish(self.stream, self.objects)

    def offsets(self):
        return tempfile.mkdtemp(dir=self.tmp.name)

    def cleanup(self):
        try:
            super().cleanup()
        finally:
            self.tmp.cleanup()

    # the three readers of N messages

    def read_stream(self):
        counter = Counter(self.n)
        consumer = AMQPConsumer(self.stream, self.props, counter.seen,
                                stream=True, reader='bench',
                                offsets=self.offsets(), start='first')
        self.run_consumer(consumer, counter)
        return counter.rate(self.stream, self.checksum)

    def read_broadcast(self):
        queue = f'{self.exchange}.broadcast.{len(self.queues)}'
        counter = Counter(self.n)
        consumer = AMQPConsumer(queue, self.props, counter.seen)
        ready, rate = self.spawn.Event(), self.spawn.Value('d', 0.0)
        child = self.spawn.Process(
            target=publish_child, args=(self.url, self.exchange, queue,
                                        self.n, ready, rate), daemon=True)
        thread = self.start(consumer, counter)
        try:
            child.start()           # the queue is bound: publish now
            if not ready.wait(30):
                raise RuntimeError('the publishing process did not '
                                   'connect within 30 s')
            counter.wait()
        finally:
            thread.stop()
            child.join(30)
            if child.is_alive():
                child.kill()
        if child.exitcode != 0:
            raise RuntimeError(f'the publishing process failed (exit '
                               f'status {child.exitcode})')
        self.publish_rates.append(rate.value)
        return counter.rate(queue, self.checksum)

    def read_raw(self):
        counter = Counter(self.n)
        conn = self.raw_connection()
        try:
            channel = conn.channel()
            channel.basic_qos(0, RAW_PREFETCH, False)
            loads, seen = pickle.loads, counter.seen
            taken = [0]

            def on_message(message):
                seen(loads(message.body))
                taken[0] += 1
                if taken[0] % RAW_ACK_EVERY == 0 or counter.done.is_set():
                    channel.basic_ack(message.delivery_tag, multiple=True)

            channel.basic_consume(self.stream, callback=on_message,
                                  no_ack=False,
                                  arguments={'x-stream-offset': 'first'})
            idle, last = 0, 0
            while not counter.done.is_set():
                try:
                    conn.drain_events(timeout=1)
                except socket.timeout:
                    idle = idle + 1 if counter.count == last else 0
                    last = counter.count
                    if idle >= STALL:
                        break
        finally:
            conn.close()
        return counter.rate(self.stream, self.checksum)

    def start(self, consumer, counter):
        counter.on_done = consumer.stop
        thread = AMQPThread(consumer)
        thread.start()
        if consumer.error is not None:
            thread.stop()
            raise consumer.error
        return thread

    def run_consumer(self, consumer, counter):
        thread = self.start(consumer, counter)
        try:
            counter.wait()
        finally:
            thread.stop()

    # catch-up

    def catchup_reader(self, callback):
        return AMQPConsumer(self.catchup, self.props, callback, stream=True,
                            reader='bench-catchup',
                            offsets=self.catchup_offsets, start='first')

    def setup_catchup(self):
        """A stream whose reader has a position: it handled one message
        and was stopped."""
        self.catchup = self.new_stream('catchup')
        self.publish(self.catchup, [{'id': -1}])
        counter = Counter(1)
        consumer = self.catchup_reader(counter.seen)
        self.run_consumer(consumer, counter)
        if counter.count != 1 or consumer.status()['position'] != 0:
            raise Lost(f'the catch-up reader of {self.catchup} handled '
                       f'{counter.count} message(s), position '
                       f"{consumer.status()['position']} (expected 1, 0)")
        self.catchup_position = 0

    def read_catchup(self):
        """Publish ``behind`` messages while the reader is stopped, then
        time it from start() to the last of them."""
        self.publish(self.catchup, self.behind_objects)
        counter = Counter(self.behind)
        consumer = self.catchup_reader(counter.seen)
        begin = time.perf_counter()
        self.run_consumer(consumer, counter)
        status = consumer.status()
        # offsets are not dense (the broker gives some to chunks without
        # messages, e.g. at each segment start): at least ``behind`` on
        least = self.catchup_position + self.behind
        position = status['position']
        if counter.count != self.behind or \
                counter.total != sum(range(self.behind)) or \
                status['handled'] != self.behind or status['missed'] or \
                position is None or position < least or \
                position != status['last_offset'] or \
                status['saved_position'] != position:
            raise Lost(f'the catch-up reader of {self.catchup} got '
                       f'{counter.count} of {self.behind} messages (id sum '
                       f'{counter.total}), status {status} (expected a '
                       f'position from {least}, saved)')
        self.catchup_position = position
        seconds = counter.last - begin
        return (self.behind / seconds, seconds,
                counter.cpu / (self.behind - 1), status.get('skipped', 0))


def run(args):
    size = len(pickle.dumps(payload(args.messages - 1), PROTOCOL))
    bench = StreamBench(args.url, args.messages, args.behind)
    version = bench.admin.server_properties.get('version', '?')
    if isinstance(version, bytes):
        version = version.decode()
    print(f'zamqp ({os.path.dirname(zamqp.__file__)}) stream readers, raw '
          f'py-amqp {amqp.__version__}, RabbitMQ {version}, '
          f'{AMQPProps(url=args.url).url()}\n'
          f'{args.messages} messages of {size} bytes (pickled dict) per '
          f'measurement, catch-up {args.behind} behind, {args.rounds} '
          'rounds; per round: msg/s', flush=True)
    tests = {'stream': bench.read_stream, 'broadcast': bench.read_broadcast,
             'raw stream': bench.read_raw}
    results = {side: [] for side in SIDES}
    results['catch-up'] = []
    started = time.perf_counter()
    try:
        bench.setup()
        bench.setup_catchup()
        for rnd in range(args.rounds):
            # rotate the order: each side first, second and last in turn
            order = SIDES[rnd % 3:] + SIDES[:rnd % 3]
            for side in order:
                results[side].append(tests[side]())
            results['catch-up'].append(bench.read_catchup())
            rates = {side: results[side][-1][0] for side in SIDES}
            rate, seconds, _, skipped = results['catch-up'][-1]
            print(f'round {rnd + 1}, {order[0]:<10} first | '
                  + ' | '.join(f'{side} {rates[side]:.0f}'
                               for side in SIDES)
                  + f' (published {bench.publish_rates[-1]:.0f})'
                  + f' | catch-up {rate:.0f} ({seconds:.1f} s, skipped '
                  f'{skipped})', flush=True)
    finally:
        bench.cleanup()
    results['elapsed'] = time.perf_counter() - started
    results['published'] = bench.publish_rates
    return results


def report(results):
    print()
    print(f'{"":<24} {"msg/s":>7} {"CPU us/msg":>10}   per-round msg/s')
    rate = {}
    for side, label in zip(SIDES, ('stream reader (zamqp)',
                                   'broadcast (zamqp)',
                                   'stream, raw py-amqp')):
        rounds = results[side]
        rate[side] = statistics.median(r for r, cpu in rounds)
        cpu = statistics.median(cpu for r, cpu in rounds) * 1e6
        print(f'{label:<24} {rate[side]:>7,.0f} {cpu:>10.1f}   '
              + ' '.join(f'{r:,.0f}' for r, cpu in rounds))
    catchup = results['catch-up']
    catch_rate = statistics.median(c[0] for c in catchup)
    catch_seconds = statistics.median(c[1] for c in catchup)
    catch_cpu = statistics.median(c[2] for c in catchup) * 1e6
    print(f'{"catch-up (zamqp)":<24} {catch_rate:>7,.0f} {catch_cpu:>10.1f}   '
          + ' '.join(f'{c[0]:,.0f}' for c in catchup)
          + f'  ({catch_seconds:.1f} s median)')
    ratio = rate['stream'] / rate['broadcast']
    raw_ratio = rate['stream'] / rate['raw stream']
    per_round = ' '.join(
        f'{s[0] / b[0]:.2f}' for s, b in zip(results['stream'],
                                             results['broadcast']))
    per_round_raw = ' '.join(
        f'{s[0] / r[0]:.2f}' for s, r in zip(results['stream'],
                                             results['raw stream']))
    print(f'Medians over the rounds. stream/broadcast {ratio:.2f} '
          f'({per_round}); stream zamqp/raw {raw_ratio:.2f} '
          f'({per_round_raw})')
    published = results['published']
    print(f'The broadcast publisher (another process) published at '
          f'{statistics.median(published):,.0f} msg/s (median; '
          + ' '.join(f'{r:,.0f}' for r in published) + ')')
    print(f'catch-up: {catch_rate:,.0f} msg/s, {catch_seconds:.1f} s from '
          'start() to the last message; '
          f'run took {results["elapsed"]:.0f} s')
    return {'stream/broadcast': ratio, 'stream/raw': raw_ratio,
            'catch-up': catch_rate}


def main(argv=None):
    parser = parser_for(__doc__, rounds=3)
    parser.add_argument('--behind', type=int, default=100000,
                        help='messages the catch-up reader is behind '
                        '(default 100000)')
    args = parser.parse_args(argv)
    if args.messages < 2 or args.rounds < 1 or args.behind < 2:
        parser.error('need --messages >= 2, --rounds >= 1, --behind >= 2')
    return execute(run, report, args)


if __name__ == '__main__':
    sys.exit(main())
