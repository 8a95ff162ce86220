"""How zamqp's cost grows with the body size and the consumer count.

(a) Body sizes (``--sizes``, default 100 B, 1 KB, 10 KB, 100 KB, 1 MB):
the messages are bytes objects of that size (an 8-byte id, then random
bytes), pickled on publish and unpickled on consume by every client.
N messages per measurement (``--messages``, default 20000), fewer for big
bodies: at most ``--max-bytes`` (default 200 MB) per measurement, at
least 100 messages. Measured, in rotating order:

* publish: py-amqp ``basic_publish`` against
  ``AMQPProducer(confirm=False)``, client-side time for all messages;
  afterwards (untimed) the queue must hold them all;
* consume: a queue pre-filled (untimed, by a raw publisher) is consumed
  with auto-ack by py-amqp, pika and zamqp (``AMQPConsumer(shared=True,
  ack=False)`` in an AMQPThread), first to last message.

(b) Consumer counts (``--consumers``, default 1, 10, 50, 200): K broadcast
consumers in this process, each its own exclusive queue bound to one
fanout exchange: zamqp ``AMQPConsumer(queue, props, callback)`` (props
type 'fanout'), each in its own AMQPThread (a connection each), against
K py-amqp connections each consuming in a thread of its own (auto-ack).
Once all consume, a publisher process sends D/K messages (``--deliveries``
D, default 20000; the pickled dict of throughput.py), so D messages are
delivered in all; the rate is D over the time from the first publish to
the last delivery.

Every callback checks each message (its id, its size) so a lost,
duplicated or mangled message is an error. Prints tables (msg/s, MB/s,
ratios, client CPU per message) and draws a PNG with both: rate against
body size (log-log) and against the consumer count (``--plot``, default
benchmarks/scaling.png). Run::

    .venv/bin/python benchmarks/scaling.py [--rounds R] [--quick]

Exits 1 when messages are lost or the broker fails, never because a
ratio is low. Queues and exchanges are named ``zamqp.bench.<random>`` and
deleted at the end.
"""
import concurrent.futures
import multiprocessing
import os
import pickle
import socket
import statistics
import sys
import threading
import time
import uuid

import amqp
import pika

import zamqp
from zamqp import AMQPConsumer
from zamqp import AMQPProps
from zamqp import AMQPThread

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare import Compare  # noqa: E402
from compare import drain  # noqa: E402
from compare import rotate  # noqa: E402
from compare import source_state  # noqa: E402
from compare import timed  # noqa: E402
from throughput import CONTENT_TYPE  # noqa: E402
from throughput import PROTOCOL  # noqa: E402
from throughput import STALL  # noqa: E402
from throughput import Counter  # noqa: E402
from throughput import Lost  # noqa: E402
from throughput import execute  # noqa: E402
from throughput import parser_for  # noqa: E402
from throughput import payload  # noqa: E402
from throughput import run_until_done  # noqa: E402

SIZES = (100, 1000, 10_000, 100_000, 1_000_000)
CONSUMERS = (1, 10, 50, 200)
MB = 1e6
ID = 8                  # bytes of the id at the start of each body
STARTERS = 8            # threads that start the consumers of (b)
COLOURS = {'py-amqp': 'tab:blue', 'pika': 'tab:green', 'zamqp': 'tab:red'}
SIZE_ROWS = ('publish py-amqp', 'publish zamqp', 'consume py-amqp',
             'consume pika', 'consume zamqp')


def bodies(size, count):
    """``count`` bytes objects of ``size``: an id, then random bytes."""
    filler = os.urandom(max(size - ID, 0))
    return [i.to_bytes(ID, 'big') + filler for i in range(count)]


class SizeCounter(Counter):
    """Counts bytes bodies of one size; sums their ids."""

    def __init__(self, n, size):
        super().__init__(n)
        self.size = size
        self.wrong = 0

    def seen(self, body):
        if len(body) != self.size:
            self.wrong += 1
        super().seen({'id': int.from_bytes(body[:ID], 'big')})

    def rate(self, queue, checksum):
        if self.wrong:
            raise Lost(f'consumer of {queue}: {self.wrong} bodies were '
                       f'not {self.size} bytes long')
        return super().rate(queue, checksum)


class Scaling(Compare):
    """Compare's broker helpers and peers, with bytes bodies."""

    def __init__(self, url):
        super().__init__(url, 2, 2)

    def use(self, size, count):
        """Measure with ``count`` bodies of ``size`` bytes from now on."""
        self.size, self.n = size, count
        self.objects = bodies(size, count)
        self.bodies = [pickle.dumps(obj, PROTOCOL) for obj in self.objects]
        self.checksum = sum(range(count))

    def publish_raw(self):
        queue = self.new_queue('pub-raw')
        conn = self.raw_connection()
        try:
            channel = conn.channel()
            publish, message, dumps = channel.basic_publish, \
                self.raw_message, pickle.dumps

            def loop():
                for obj in self.objects:
                    publish(message(dumps(obj, PROTOCOL)), self.exchange,
                            queue)
            result = timed(loop, self.n)
        finally:
            conn.close()
        return self.published(queue, result)

    def consume_raw(self):
        queue = self.new_queue('raw')
        self.fill(queue)
        counter = SizeCounter(self.n, self.size)
        conn = self.raw_connection()
        try:
            channel = conn.channel()
            loads, seen = pickle.loads, counter.seen
            channel.basic_consume(queue, no_ack=True,
                                  callback=lambda m: seen(loads(m.body)))
            drain(counter, lambda: conn.drain_events(timeout=1))
        finally:
            conn.close()
        return self.consumed(queue, counter)

    def consume_pika(self):
        queue = self.new_queue('pika')
        self.fill(queue)
        counter = SizeCounter(self.n, self.size)
        conn = self.pika_connection()
        try:
            loads, seen = pickle.loads, counter.seen
            conn.channel().basic_consume(
                queue, lambda ch, method, props, body: seen(loads(body)),
                auto_ack=True)
            drain(counter, lambda: conn.process_data_events(time_limit=1))
        finally:
            conn.close()
        return self.consumed(queue, counter)

    def consume_zamqp(self):
        queue = self.new_queue('zamqp')
        self.fill(queue)
        counter = SizeCounter(self.n, self.size)
        consumer = AMQPConsumer(queue, self.props, counter.seen,
                                shared=True, ack=False)
        run_until_done(consumer, counter)
        return self.consumed(queue, counter)

    def consumed(self, queue, counter):
        result = counter.rate(queue, self.checksum)
        self.admin_channel.queue_delete(queue)
        return result

    def size_tests(self):
        return dict(zip(SIZE_ROWS, (
            self.publish_raw, lambda: self.publish_zamqp(False),
            self.consume_raw, self.consume_pika, self.consume_zamqp)))

    # (b): many consumers

    def many(self, kind, k, deliveries, publisher):
        """``k`` consumers of ``kind`` on the fanout exchange get
        ``deliveries // k`` messages each from ``publisher``; (msg/s,
        CPU s per delivered message)."""
        per = deliveries // k
        group = Group(k, per)
        start = self.start_zamqp if kind == 'zamqp' else self.start_raw
        stop = start(group)
        try:
            cpu = time.process_time()
            publisher.send(per)
            group.wait()
            cpu = time.process_time() - cpu
            begin, end = publisher.receive()
        finally:
            stop()
        group.check(kind)
        total = per * k
        return total / (group.last() - begin), cpu / total, \
            per / (end - begin)

    def start_zamqp(self, group):
        props = self.props.replace(exchange=self.fanout, type='fanout')
        threads = [AMQPThread(AMQPConsumer(
            f'{self.fanout}.zamqp{i}', props, tally.seen))
            for i, tally in enumerate(group.tallies)]

        def start(thread):
            thread.start()
            if thread.consumer.error is not None:
                raise thread.consumer.error
        with concurrent.futures.ThreadPoolExecutor(STARTERS) as pool:
            list(pool.map(start, threads))

        def stop():
            for thread in threads:
                thread.consumer.stop()
            for thread in threads:
                thread.stop(5)
        return stop

    def start_raw(self, group):
        stopping = threading.Event()
        ready = threading.Semaphore(0)
        threads = [threading.Thread(
            target=self.raw_consumer, args=(tally, ready, stopping),
            daemon=True) for tally in group.tallies]
        for thread in threads:
            thread.start()

        def stop():
            stopping.set()
            for thread in threads:
                thread.join(5)
        for _ in threads:
            if not ready.acquire(timeout=60):
                stop()
                raise Lost('a raw consumer did not start within 60 s')
        return stop

    def raw_consumer(self, tally, ready, stopping):
        conn = self.raw_connection()
        try:
            channel = conn.channel()
            queue = f'{self.fanout}.raw.{uuid.uuid4().hex}'
            channel.queue_declare(queue, exclusive=True, auto_delete=True)
            channel.queue_bind(queue, self.fanout, '')
            loads, seen = pickle.loads, tally.seen
            channel.basic_consume(queue, no_ack=True,
                                  callback=lambda m: seen(loads(m.body)))
            ready.release()
            while not (tally.done.is_set() or stopping.is_set()):
                try:
                    conn.drain_events(timeout=0.5)
                except socket.timeout:
                    pass
        finally:
            conn.close()


class Group:
    """The tallies of K consumers; done once each got its messages."""

    def __init__(self, k, per):
        self.per = per
        self.tallies = [Tally(self, per) for _ in range(k)]
        self.finished = 0
        self.lock = threading.Lock()
        self.done = threading.Event()

    def finish(self):
        with self.lock:
            self.finished += 1
            if self.finished == len(self.tallies):
                self.done.set()

    def wait(self):
        last = -1
        while not self.done.wait(STALL):
            count = sum(tally.count for tally in self.tallies)
            if count == last:
                return
            last = count

    def last(self):
        return max(tally.last for tally in self.tallies)

    def check(self, kind):
        checksum = sum(range(self.per))
        for tally in self.tallies:
            if tally.count != self.per or tally.total != checksum:
                raise Lost(f'{kind} consumer got {tally.count} of '
                           f'{self.per} messages (id checksum '
                           f'{tally.total}, expected {checksum})')


class Tally:
    """One consumer's count and id sum; CLOCK_MONOTONIC of its last."""

    def __init__(self, group, n):
        self.group, self.n = group, n
        self.count = self.total = 0
        self.last = None
        self.done = threading.Event()

    def seen(self, body):
        self.total += body['id']
        self.count += 1
        if self.count == self.n:
            self.last = time.monotonic()
            self.done.set()
            self.group.finish()


class Publisher:
    """A process that publishes the pickled dicts to the fanout exchange
    on request (so that it does not take the consumers' GIL)."""

    def __init__(self, url, exchange):
        context = multiprocessing.get_context('spawn')
        self.requests, self.replies = context.Queue(), context.Queue()
        self.process = context.Process(
            target=publisher, args=(url, exchange, self.requests,
                                    self.replies), daemon=True)
        self.process.start()

    def send(self, count):
        self.requests.put(count)

    def receive(self):
        reply = self.replies.get(timeout=60)
        if isinstance(reply, str):
            raise RuntimeError(f'the publisher process failed: {reply}')
        return reply

    def close(self):
        self.requests.put(None)
        self.process.join(10)
        if self.process.is_alive():
            self.process.terminate()


def publisher(url, exchange, requests, replies):
    """The publisher process: for each count requested, publish that
    many messages; reply (first publish, last publish) in CLOCK_MONOTONIC."""
    props = AMQPProps(url=url)
    conn = amqp.Connection(host=props.address, userid=props.user,
                           password=props.password,
                           virtual_host=props.virtual_host)
    conn.connect()
    channel = conn.channel()
    try:
        while True:
            count = requests.get()
            if count is None:
                break
            messages = [amqp.Message(pickle.dumps(payload(i), PROTOCOL),
                                     content_type=CONTENT_TYPE,
                                     content_encoding='binary',
                                     delivery_mode=1)
                        for i in range(count)]
            begin = time.monotonic()
            for message in messages:
                channel.basic_publish(message, exchange, '')
            replies.put((begin, time.monotonic()))
    except Exception as exc:
        replies.put(f'{type(exc).__name__}: {exc}')
    finally:
        conn.close()


def measure_sizes(bench, args):
    """{size: {row: [(msg/s, CPU s per message) per round]}}."""
    results = {size: {row: [] for row in SIZE_ROWS} for size in args.sizes}
    for rnd in range(args.rounds):
        for size in args.sizes:
            count = max(100, min(args.messages, args.max_bytes // size))
            bench.use(size, count)
            for row, test in rotate(list(bench.size_tests().items()), rnd):
                results[size][row].append(test())
            print(f'round {rnd + 1}, {size:,} B x {count:,}: ' + ' | '.join(
                f'{row} {results[size][row][-1][0]:,.0f}'
                for row in SIZE_ROWS), flush=True)
    bench.use(2, 2)         # free the bodies
    return results


def measure_consumers(bench, args):
    """{k: {kind: [(msg/s, CPU s per delivery, publisher msg/s)]}}."""
    results = {k: {'py-amqp': [], 'zamqp': []} for k in args.consumers}
    publisher = Publisher(args.url, bench.fanout)
    try:
        for rnd in range(args.rounds):
            for k in args.consumers:
                for kind in rotate(['py-amqp', 'zamqp'], rnd + k):
                    results[k][kind].append(bench.many(
                        'zamqp' if kind == 'zamqp' else 'raw', k,
                        args.deliveries, publisher))
                print(f'round {rnd + 1}, {k} consumers: ' + ' | '.join(
                    f'{kind} {results[k][kind][-1][0]:,.0f}'
                    for kind in results[k]), flush=True)
    finally:
        publisher.close()
    return results


def run(args):
    print(f'zamqp ({os.path.dirname(zamqp.__file__)}) vs py-amqp '
          f'{amqp.__version__}, pika {pika.__version__}, '
          f'{AMQPProps(url=args.url).url()}\n'
          f'{args.rounds} rounds; body sizes {sizes_text(args.sizes)} '
          f'(<= {args.messages} messages, <= {args.max_bytes / MB:.0f} MB '
          f'per measurement); {args.deliveries} deliveries to '
          f'{", ".join(map(str, args.consumers))} consumers\n'
          f'{source_state()}', flush=True)
    bench = Scaling(args.url)
    started = time.monotonic()
    try:
        sizes = measure_sizes(bench, args) if args.sizes else {}
        consumers = measure_consumers(bench, args) if args.consumers \
            else {}
    finally:
        bench.cleanup()
    print(f'took {time.monotonic() - started:.0f} s; at the end: '
          f'{source_state()}')
    return args, sizes, consumers


def sizes_text(sizes):
    return ', '.join(size_label(size) for size in sizes)


def size_label(size):
    for unit, scale in (('MB', 10 ** 6), ('KB', 10 ** 3)):
        if size >= scale and size % scale == 0:
            return f'{size // scale} {unit}'
    return f'{size} B'


def median(values, index=0):
    return statistics.median(value[index] for value in values)


def report(outcome):
    args, sizes, consumers = outcome
    if sizes:
        report_sizes(sizes)
    if consumers:
        report_consumers(consumers)
    if args.plot:
        plot(sizes, consumers, args.plot)
        print(f'plot: {args.plot}')


def report_sizes(sizes):
    print()
    print(f'{"body size":<10} {"":<16} {"msg/s":>8} {"MB/s":>7} '
          f'{"ratio":>6} {"CPU us":>8}   per-round msg/s')
    for size, rows in sizes.items():
        ref = {'publish': median(rows['publish py-amqp']),
               'consume': median(rows['consume py-amqp'])}
        label = size_label(size)
        for row, rounds in rows.items():
            rate = median(rounds)
            ratio = rate / ref[row.split()[0]]
            print(f'{label:<10} {row:<16} {rate:>8,.0f} '
                  f'{rate * size / MB:>7,.1f} {ratio:>6.2f} '
                  f'{median(rounds, 1) * 1e6:>8.1f}   '
                  + ' '.join(f'{r[0]:,.0f}' for r in rounds))
            label = ''
    print('Medians over the rounds; ratio: msg/s over py-amqp\'s (publish '
          'or consume);\nMB/s of bodies; CPU us: client CPU per message.')


def report_consumers(consumers):
    print()
    print(f'{"consumers":>9} {"":<8} {"msg/s":>8} {"MB/s":>6} {"ratio":>6} '
          f'{"CPU us":>7} {"pub msg/s":>9}   per-round msg/s')
    size = len(pickle.dumps(payload(0), PROTOCOL))
    for k, kinds in consumers.items():
        ref = median(kinds['py-amqp'])
        label = str(k)
        for kind, rounds in kinds.items():
            rate = median(rounds)
            print(f'{label:>9} {kind:<8} {rate:>8,.0f} '
                  f'{rate * size / MB:>6.1f} {rate / ref:>6.2f} '
                  f'{median(rounds, 1) * 1e6:>7.1f} '
                  f'{median(rounds, 2):>9,.0f}   '
                  + ' '.join(f'{r[0]:,.0f}' for r in rounds))
            label = ''
    print('msg/s: messages delivered per second to all consumers together '
          '(first publish\nto last delivery); ratio: zamqp/py-amqp; CPU us: '
          'client CPU (all consumers)\nper delivered message; pub msg/s: '
          'the publisher process\'s rate.')


def plot(sizes, consumers, path):
    import matplotlib
    matplotlib.use('Agg')
    from matplotlib import pyplot

    figure, (left, right) = pyplot.subplots(1, 2, figsize=(8, 5), dpi=100)
    if sizes:
        x = list(sizes)
        for row in SIZE_ROWS:
            action, client = row.split()
            left.plot(x, [median(sizes[s][row]) for s in x], marker='o',
                      label=row, color=COLOURS[client],
                      linestyle='-' if action == 'publish' else '--')
        left.set_xscale('log')
        left.set_yscale('log')
        left.set_xticks(x, [size_label(size) for size in x],
                        fontsize='small')
        left.tick_params(axis='x', which='minor', bottom=False)
    left.set_xlabel('body size (publish solid, consume dashed)')
    left.set_ylabel('msg/s')
    left.set_title('rate against body size')
    left.legend(fontsize='small')
    if consumers:
        x = list(consumers)
        for kind in ('py-amqp', 'zamqp'):
            right.plot(x, [median(consumers[k][kind]) for k in x],
                       marker='o', label=kind, color=COLOURS[kind])
        right.set_xscale('log')
        right.set_xticks(x, [str(k) for k in x])
        right.tick_params(axis='x', which='minor', bottom=False)
        right.set_ylim(bottom=0)
    right.set_xlabel('consumers (one queue each)')
    right.set_ylabel('deliveries/s, all consumers')
    right.set_title('rate against consumer count')
    right.legend(fontsize='small')
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    pyplot.close(figure)


def main(argv=None):
    parser = parser_for(__doc__, rounds=5)
    here = os.path.dirname(os.path.abspath(__file__))
    parser.add_argument('--sizes', type=int, nargs='*', default=list(SIZES),
                        help='body sizes in bytes (default 100 1000 10000 '
                        '100000 1000000; none: skip)')
    parser.add_argument('--max-bytes', type=int, default=200 * 10 ** 6,
                        help='body bytes per measurement, at most '
                        '(default 200 MB)')
    parser.add_argument('--consumers', type=int, nargs='*',
                        default=list(CONSUMERS),
                        help='consumer counts (default 1 10 50 200; none: '
                        'skip)')
    parser.add_argument('--deliveries', type=int, default=20000,
                        help='messages delivered in all per consumer-count '
                        'measurement (default 20000)')
    parser.add_argument('--plot', default=os.path.join(here, 'scaling.png'),
                        help='PNG to draw (default benchmarks/scaling.png; '
                        'empty: none)')
    parser.add_argument('--quick', action='store_true',
                        help='smoke test: 2000 messages, 20 MB, 2000 '
                        'deliveries, 2 rounds')
    args = parser.parse_args(argv)
    if args.quick:
        args.messages, args.rounds = 2000, 2
        args.max_bytes, args.deliveries = 20 * 10 ** 6, 2000
    if args.rounds < 1 or min(args.sizes, default=ID) < ID or \
            min(args.consumers, default=1) < 1 or \
            args.deliveries < max(args.consumers, default=1) * 2:
        parser.error(f'need --rounds >= 1, --sizes >= {ID}, --consumers >= '
                     '1 and --deliveries >= 2 per consumer')
    return execute(run, report, args)


if __name__ == '__main__':
    sys.exit(main())
