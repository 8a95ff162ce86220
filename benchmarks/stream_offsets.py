"""What a stream reader's FileOffsetStore costs: the same pre-filled
stream read with a FileOffsetStore (fsync'ed files, the default) and
with an in-memory IOffsetStore, in interleaved rounds; medians and the
ratio file/memory.

    .venv/bin/python benchmarks/stream_offsets.py [--messages N]
        [--rounds R] [--url URL]

Its exchange and stream are named ``zamqp.bench.<random>`` and deleted
at the end.
"""
import argparse
import os
import shutil
import statistics
import tempfile
import threading
import time
import uuid

import amqp

from zamqp import AMQPConsumer
from zamqp import AMQPProducer
from zamqp import AMQPProps
from zamqp import AMQPThread

BODY = {'id': 1, 'name': 'x' * 110, 'values': list(range(20))}


class MemoryStore:
    """Positions in a dict (an IOffsetStore that writes nothing)."""

    def __init__(self):
        self.positions = {}

    def load(self, stream, reader):
        return self.positions.get((stream, reader))

    def save(self, stream, reader, offset):
        self.positions[(stream, reader)] = offset


def read(stream, props, store, reader, count):
    """msg/s of one reader reading ``count`` messages from the first."""
    done, seen, began = threading.Event(), [0], [None]

    def callback(body):
        if began[0] is None:
            began[0] = time.perf_counter()
        seen[0] += 1
        if seen[0] == count:
            done.set()

    thread = AMQPThread(AMQPConsumer(stream, props, callback, stream=True,
                                     reader=reader, offsets=store,
                                     start='first'))
    thread.start()
    if not done.wait(120):
        raise SystemExit(f'only {seen[0]} of {count} messages read')
    elapsed = time.perf_counter() - began[0]
    thread.stop()
    return count / elapsed


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--messages', type=int, default=20000)
    parser.add_argument('--rounds', type=int, default=4)
    parser.add_argument('--url', default=os.environ.get(
        'ZAMQP_TEST_URL', 'amqp://guest:guest@127.0.0.1:5672/'))
    args = parser.parse_args()
    name = f'zamqp.bench.{uuid.uuid4().hex[:10]}'
    props = AMQPProps(url=args.url, exchange=name, type='fanout')
    stream = name + '.stream'
    directories = []
    try:
        # declare the stream, then fill it
        directories.append(tempfile.mkdtemp())
        thread = AMQPThread(AMQPConsumer(stream, props, print, stream=True,
                                         reader='declare',
                                         offsets=directories[-1]))
        thread.start()
        thread.stop()
        with AMQPProducer(stream, props) as producer:
            for _ in range(args.messages):
                producer(BODY)
            producer.flush()
        rates = {'file': [], 'memory': []}
        for n in range(args.rounds):
            kinds = ('file', 'memory') if n % 2 == 0 else ('memory', 'file')
            for kind in kinds:
                if kind == 'file':
                    directories.append(tempfile.mkdtemp())
                    store = directories[-1]
                else:
                    store = MemoryStore()
                rates[kind].append(read(stream, props, store,
                                        f'{kind}{n}', args.messages))
        medians = {}
        for kind, values in rates.items():
            medians[kind] = statistics.median(values)
            rounds = ', '.join(f'{v:,.0f}' for v in values)
            print(f'{kind:<7} median {medians[kind]:,.0f} msg/s '
                  f'(rounds: {rounds})')
        ratio = medians['file'] / medians['memory']
        print(f'file/memory {ratio:.2f}')
    finally:
        connection = amqp.Connection(
            props.address, userid=props.user, password=props.password,
            virtual_host=props.virtual_host)
        connection.connect()
        channel = connection.channel()
        channel.queue_delete(stream)
        channel.queue_delete(name + '.dead')
        channel.exchange_delete(name + '.dead')
        channel.exchange_delete(name)
        connection.close()
        for directory in directories:
            shutil.rmtree(directory, ignore_errors=True)


if __name__ == '__main__':
    main()
