"""Confirmed publishing: zamqp batches against raw py-amqp, same broker.

Publishes N small pickled dicts (about 200 bytes), in alternating
rounds, with:

* raw: py-amqp ``basic_publish`` without confirms (the reference);
* zamqp batch B: ``AMQPProducer(confirm=True).publish_many(chunk)`` for
  chunks of B messages (one wait for the confirms per chunk);
* raw confirm: py-amqp with ``confirm_publish=True`` (a round trip per
  message);
* zamqp single: ``AMQPProducer(confirm=True)(obj)`` (the same, through
  zamqp).

Confirmed runs are timed until the last confirm arrived; the raw
unconfirmed run until the last message was written. Afterwards, untimed,
each queue must hold exactly N messages. Prints msg/s per round and the
medians, with the ratio to raw unconfirmed publishing. Run::

    .venv/bin/python benchmarks/confirms.py [--messages N] [--rounds R]

Exits 1 when messages are lost or the broker fails, never because a ratio
is low.
"""
import os
import pickle
import statistics
import sys
import time

import amqp

import zamqp
from zamqp import AMQPProducer
from zamqp import AMQPProps

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from throughput import CONTENT_TYPE  # noqa: E402
from throughput import PROTOCOL  # noqa: E402
from throughput import Bench  # noqa: E402
from throughput import execute  # noqa: E402
from throughput import parser_for  # noqa: E402
from throughput import payload  # noqa: E402

#: zamqp confirmed batches should reach half the unconfirmed raw rate.
TARGET = 0.5


class ConfirmBench(Bench):

    def raw(self, confirm):
        queue = self.new_queue('raw-confirm' if confirm else 'raw')
        conn = self.raw_connection(confirm)
        try:
            channel = conn.channel()
            publish, dumps, exchange = channel.basic_publish, pickle.dumps, \
                self.exchange
            start = time.perf_counter()
            for obj in self.objects:
                publish(amqp.Message(dumps(obj, PROTOCOL),
                                     content_type=CONTENT_TYPE,
                                     delivery_mode=1),
                        exchange, queue)
            elapsed = time.perf_counter() - start
        finally:
            conn.close()
        return self.done(queue, elapsed)

    def raw_connection(self, confirm=False):
        props = self.props if hasattr(self, 'props') else AMQPProps(
            url=self.url)
        conn = amqp.Connection(
            host=props.address, userid=props.user, password=props.password,
            virtual_host=props.virtual_host, ssl=props.ssl,
            connect_timeout=props.connect_timeout, confirm_publish=confirm)
        conn.connect()
        return conn

    def zamqp_batch(self, size):
        queue = self.new_queue(f'batch{size}')
        producer = AMQPProducer(queue, self.props, confirm=True)
        chunks = [self.objects[i:i + size]
                  for i in range(0, len(self.objects), size)]
        try:
            producer(None)          # connect, confirm mode: not timed
            start = time.perf_counter()
            for chunk in chunks:
                producer.publish_many(chunk)
            elapsed = time.perf_counter() - start
        finally:
            producer.close()
        return self.done(queue, elapsed, extra=1)

    def zamqp_single(self):
        queue = self.new_queue('single')
        producer = AMQPProducer(queue, self.props, confirm=True)
        try:
            producer(None)
            start = time.perf_counter()
            for obj in self.objects:
                producer(obj)
            elapsed = time.perf_counter() - start
        finally:
            producer.close()
        return self.done(queue, elapsed, extra=1)

    def done(self, queue, elapsed, extra=0):
        self.wait_depth(queue, self.n + extra)
        self.admin_channel.queue_delete(queue)
        return self.n / elapsed


def run(args):
    size = len(pickle.dumps(payload(args.messages - 1), PROTOCOL))
    print(f'zamqp ({os.path.dirname(zamqp.__file__)}) vs raw py-amqp '
          f'{amqp.__version__}, {AMQPProps(url=args.url).url()}\n'
          f'{args.messages} messages of {size} bytes per measurement, '
          f'{args.rounds} rounds; msg/s')
    bench = ConfirmBench(args.url, args.messages)
    tests = {'raw': lambda: bench.raw(False)}
    for size in args.batch:
        tests[f'zamqp batch {size}'] = lambda size=size: \
            bench.zamqp_batch(size)
    tests['raw confirm'] = lambda: bench.raw(True)
    if not args.no_single:
        tests['zamqp single'] = bench.zamqp_single
    results = {name: [] for name in tests}
    try:
        for rnd in range(args.rounds):
            names = list(tests) if rnd % 2 == 0 else list(tests)[::-1]
            for name in names:
                results[name].append(tests[name]())
            print(f'round {rnd + 1}: ' + ' | '.join(
                f'{name} {results[name][-1]:,.0f}' for name in tests),
                flush=True)
    finally:
        bench.cleanup()
    return results


def report(results):
    medians = {name: statistics.median(rates)
               for name, rates in results.items()}
    raw = medians['raw']
    print()
    print(f'{"":<18} {"msg/s":>8}  {"ratio to raw":>12}   per-round ratios')
    for name, rates in results.items():
        rounds = ' '.join(f'{rate / ref:.2f}' for rate, ref
                          in zip(rates, results['raw']))
        print(f'{name:<18} {medians[name]:>8,.0f}  '
              f'{medians[name] / raw:>12.2f}   {rounds}')
    print('Medians over the rounds; ratio = msg/s over raw unconfirmed '
          'py-amqp msg/s.')
    batches = [name for name in medians if name.startswith('zamqp batch')]
    low = [name for name in batches if medians[name] / raw < TARGET]
    if low:
        print(f'NOTE: below the {TARGET} target: {", ".join(low)}')
    if 'raw confirm' in medians:
        print(', '.join(f'{name} / raw confirm '
                        f'{medians[name] / medians["raw confirm"]:.1f}x'
                        for name in batches))
    return medians


def main(argv=None):
    parser = parser_for(__doc__, rounds=3)
    parser.add_argument('--batch', type=int, nargs='+', default=[100, 1000],
                        help='batch sizes (default 100 1000)')
    parser.add_argument('--no-single', action='store_true',
                        help='skip zamqp per-message confirmed publishing')
    args = parser.parse_args(argv)
    if args.messages < 2 or args.rounds < 1 or min(args.batch) < 1:
        parser.error('need --messages >= 2, --rounds >= 1, --batch >= 1')
    return execute(run, report, args)


if __name__ == '__main__':
    sys.exit(main())
