"""zamqp against raw py-amqp, kombu and pika, in one run on one broker.

Every client sends the message of ``throughput.py`` (a dict, about 200
bytes pickled), pickles it on publish and unpickles every message on
consume (zamqp through its own API: AMQPProducer, AMQPConsumer in an
AMQPThread). Measurements (``--only`` picks some, comma-separated):

* publish: fire and forget, N messages on an open connection: py-amqp
  ``basic_publish``, kombu ``Producer.publish(serializer='pickle')``,
  pika ``BlockingChannel.basic_publish``, zamqp
  ``AMQPProducer(confirm=False)(obj)``; and zamqp's default producer
  (windowed confirms) timed until ``flush()`` returned;
* consume: auto-ack, from a queue pre-filled (untimed, by a raw
  publisher) with N messages, first to last message; plus two
  "ceiling" rows: the leanest Python consumer (zamqp's BufferReader on
  one connection, ``pickle.loads``, nothing else) with ``no_ack`` and
  with acks every 100 messages (prefetch 1000, as zamqp's ``ack=False``
  consumer acknowledges): what the broker delivers at most;
* consume-ack: the same with prefetch 100 and an ack per message
  (zamqp: ``ack=True``);
* confirms: zamqp ``AMQPProducer(confirm=True).publish_many(chunk)``
  for chunks of 1000, against raw unconfirmed publishing;
* signed: zamqp publish and consume with and without a secret (HMAC
  signing and checking), in the same rounds;
* roundtrip: M sequential request/reply round trips between two
  connections of this process (the replier in a thread); p50 and p99;
* fanout: a fanout exchange, 4 consumer processes that each receive all
  N messages (py-amqp against zamqp broadcast consumers), one raw
  publisher in this process; N over the time until the last process got
  its last message.

The order of the clients rotates from round to round; the table gives
the medians over the rounds, ratios to raw py-amqp (and pika), client
CPU per message and the per-round figures. Run::

    .venv/bin/python benchmarks/compare.py [--messages N] [--rounds R]
        [--round-trips M] [--only publish,consume,...] [--quick]

Exits 1 when messages are lost or the broker fails, never because a
ratio is low. Queues and exchanges are named ``zamqp.bench.<random>``
and deleted at the end.
"""
import multiprocessing
import os
import pickle
import select
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid

import amqp
import kombu
import pika

import zamqp
from zamqp import AMQPConsumer
from zamqp import AMQPProducer
from zamqp import AMQPProps
from zamqp import AMQPThread
from zamqp import frames
from zamqp.fastconsume import BufferReader
from zamqp.transport import ConsumerConnection

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from throughput import CONTENT_TYPE  # noqa: E402
from throughput import PROTOCOL  # noqa: E402
from throughput import STALL  # noqa: E402
from throughput import Bench  # noqa: E402
from throughput import Counter  # noqa: E402
from throughput import Lost  # noqa: E402
from throughput import execute  # noqa: E402
from throughput import parser_for  # noqa: E402
from throughput import payload  # noqa: E402
from throughput import run_until_done  # noqa: E402

MEASUREMENTS = ('publish', 'consume', 'consume-ack', 'confirms', 'signed',
                'roundtrip', 'fanout')
TITLES = {
    'publish': 'publish (fire and forget)',
    'consume': 'consume (auto-ack)',
    'consume-ack': 'consume (ack, prefetch 100)',
    'confirms': 'batched confirms (1000)',
    'signed': 'signed (HMAC) against unsigned',
    'roundtrip': 'round trip, p50/p99 us',
    'fanout': 'fan-out to 4 processes',
}
CHUNK = 1000            # messages per confirmed publish_many
FANOUT_PROCESSES = 4
WARM_UP = 20            # untimed round trips before the timed ones


def source_state():
    """The git commit of the zamqp that runs, and its uncommitted files."""
    here = os.path.dirname(zamqp.__file__)
    try:
        commit = subprocess.run(
            ['git', '-C', here, 'rev-parse', '--short', 'HEAD'],
            capture_output=True, text=True, timeout=10).stdout.strip()
        changed = subprocess.run(
            ['git', '-C', here, 'status', '--porcelain', '--', '.'],
            capture_output=True, text=True, timeout=10).stdout.split('\n')
    except (OSError, subprocess.SubprocessError):
        return 'zamqp source: not a git checkout'
    changed = [line[3:] for line in changed if line.strip()]
    return (f'zamqp source: commit {commit or "unknown"}, '
            f'{len(changed)} uncommitted file(s) under it'
            + (f' ({", ".join(changed)})' if changed else '')
            + f'; load average {os.getloadavg()[0]:.2f}')


def rotate(items, rnd):
    """``items`` starting at ``rnd`` (modulo), so the order changes."""
    k = rnd % len(items)
    return items[k:] + items[:k]


def drain(counter, step):
    """Call ``step()`` (reads frames, at most ~1 s) until ``counter`` is
    done or nothing arrived for STALL seconds."""
    last, progress = -1, time.monotonic()
    while not counter.done.is_set():
        try:
            step()
        except socket.timeout:
            pass
        if counter.count != last:
            last, progress = counter.count, time.monotonic()
        elif time.monotonic() - progress > STALL:
            return


def timed(loop, n):
    """Run ``loop()``; return (n / seconds, CPU seconds per message)."""
    cpu, start = time.process_time(), time.perf_counter()
    loop()
    elapsed = time.perf_counter() - start
    return n / elapsed, (time.process_time() - cpu) / n


class Compare(Bench):

    def __init__(self, url, messages, round_trips):
        super().__init__(url, messages)
        self.round_trips = round_trips
        secret = b'zamqp-bench-' + uuid.uuid4().hex.encode()
        self.signed_props = self.props.replace(secret=secret)
        self.fanout = f'{self.exchange}.fanout'
        self.admin_channel.exchange_declare(
            self.fanout, 'fanout', durable=True, auto_delete=False)
        self.bodies = [pickle.dumps(obj, PROTOCOL) for obj in self.objects]

    def cleanup(self):
        try:
            self.admin_channel.exchange_delete(self.fanout)
        finally:
            super().cleanup()

    # peers' connections

    def kombu_connection(self):
        props = self.props
        return kombu.Connection(
            hostname=props.host, port=props.port, userid=props.user,
            password=props.password, virtual_host=props.virtual_host,
            transport='pyamqp')

    def pika_connection(self):
        props = self.props
        return pika.BlockingConnection(pika.ConnectionParameters(
            host=props.host, port=props.port,
            virtual_host=props.virtual_host,
            credentials=pika.PlainCredentials(props.user, props.password)))

    def raw_message(self, body):
        return amqp.Message(body, content_type=CONTENT_TYPE,
                            content_encoding='binary', delivery_mode=1)

    def published(self, queue, result, extra=0):
        """Check that ``queue`` got every message, delete it; ``result``."""
        self.wait_depth(queue, self.n + extra)
        self.admin_channel.queue_delete(queue)
        return result

    # publish

    def publish_raw(self):
        queue = self.new_queue('pub-raw')
        conn = self.raw_connection()
        try:
            channel = conn.channel()
            publish, dumps, exchange = channel.basic_publish, pickle.dumps, \
                self.exchange

            def loop():
                for obj in self.objects:
                    publish(amqp.Message(dumps(obj, PROTOCOL),
                                         content_type=CONTENT_TYPE,
                                         delivery_mode=1),
                            exchange, queue)
            result = timed(loop, self.n)
        finally:
            conn.close()
        return self.published(queue, result)

    def publish_kombu(self):
        queue = self.new_queue('pub-kombu')
        with self.kombu_connection() as conn:
            producer = kombu.Producer(
                conn.channel(), kombu.Exchange(self.exchange, 'direct',
                                               durable=True),
                routing_key=queue, serializer='pickle')
            publish = producer.publish

            def loop():
                for obj in self.objects:
                    publish(obj, delivery_mode=1)
            result = timed(loop, self.n)
        return self.published(queue, result)

    def publish_pika(self):
        queue = self.new_queue('pub-pika')
        conn = self.pika_connection()
        try:
            publish = conn.channel().basic_publish
            dumps, exchange = pickle.dumps, self.exchange
            properties = pika.BasicProperties(content_type=CONTENT_TYPE,
                                              delivery_mode=1)

            def loop():
                for obj in self.objects:
                    publish(exchange, queue, dumps(obj, PROTOCOL),
                            properties)
            result = timed(loop, self.n)
        finally:
            conn.close()
        return self.published(queue, result)

    def publish_zamqp(self, confirm=None, props=None):
        """zamqp's producer, timed until ``flush()`` returned (a no-op
        with confirm=False)."""
        queue = self.new_queue('pub-zamqp')
        producer = AMQPProducer(queue, props or self.props, confirm=confirm)
        try:
            producer('warm-up')         # connect outside the timing
            producer.flush()

            def loop():
                for obj in self.objects:
                    producer(obj)
                producer.flush()
            result = timed(loop, self.n)
        finally:
            producer.close()
        return self.published(queue, result, extra=1)

    def publish_batched(self):
        queue = self.new_queue('batch')
        producer = AMQPProducer(queue, self.props, confirm=True)
        chunks = [self.objects[i:i + CHUNK]
                  for i in range(0, self.n, CHUNK)]
        try:
            producer('warm-up')

            def loop():
                for chunk in chunks:
                    producer.publish_many(chunk)
            result = timed(loop, self.n)
        finally:
            producer.close()
        return self.published(queue, result, extra=1)

    # consume

    def fill(self, queue):
        """Pre-fill ``queue`` with the N pickled messages (raw, fast)."""
        conn = self.raw_connection()
        try:
            channel = conn.channel()
            for body in self.bodies:
                channel.basic_publish(self.raw_message(body), self.exchange,
                                      queue)
        finally:
            conn.close()
        self.wait_depth(queue, self.n)

    def fill_zamqp(self, queue, props):
        """Pre-fill ``queue`` as zamqp publishes (signed with a secret)."""
        with AMQPProducer(queue, props, confirm=False) as producer:
            for obj in self.objects:
                producer(obj)
        self.wait_depth(queue, self.n)

    def consume_kombu(self, ack):
        queue = self.new_queue('ack-kombu' if ack else 'auto-kombu')
        self.fill(queue)
        counter = Counter(self.n)
        with self.kombu_connection() as conn:
            def on_message(body, message):
                counter.seen(body)
                if ack:
                    message.ack()

            consumer = kombu.Consumer(
                conn.channel(), queues=[kombu.Queue(queue, no_declare=True)],
                callbacks=[on_message], accept=['pickle'], no_ack=not ack,
                prefetch_count=self.prefetch if ack else None)
            with consumer:
                drain(counter, lambda: conn.drain_events(timeout=1))
        return counter.rate(queue, self.checksum)

    def consume_ceiling(self, ack):
        """What the broker delivers to the leanest Python consumer: one
        connection read by zamqp.fastconsume's BufferReader, the callback
        ``pickle.loads`` and nothing else (no worker thread, no checks);
        with ``ack`` it acknowledges every 100 messages (prefetch 1000),
        as zamqp's ``ack=False`` consumer does, else ``no_ack``."""
        queue = self.new_queue('ceiling-ack' if ack else 'ceiling')
        self.fill(queue)
        counter = Counter(self.n)
        props = self.props
        conn = ConsumerConnection(
            host=props.address, userid=props.user, password=props.password,
            virtual_host=props.virtual_host,
            connect_timeout=props.connect_timeout)
        conn.connect()
        try:
            channel = conn.channel()
            if ack:
                channel.basic_qos(0, 1000, False)
            loads, seen = pickle.loads, counter.seen

            def on_message(message):
                seen(loads(message.body))
                if ack and counter.count % 100 == 0:
                    channel.basic_ack(message.delivery_tag, multiple=True)

            channel.basic_consume(queue, callback=on_message, no_ack=not ack)
            reader = BufferReader(conn, frames.install(conn))
            poller = select.poll()
            poller.register(conn.sock, select.POLLIN)

            def step():
                if not reader.has_frame():
                    poller.poll(1000)
                reader.read()
            drain(counter, step)
        finally:
            conn.close()
        return counter.rate(queue, self.checksum)

    def consume_pika(self, ack):
        queue = self.new_queue('ack-pika' if ack else 'auto-pika')
        self.fill(queue)
        counter = Counter(self.n)
        conn = self.pika_connection()
        try:
            channel = conn.channel()
            if ack:
                channel.basic_qos(prefetch_count=self.prefetch)
            loads, seen = pickle.loads, counter.seen

            def on_message(channel, method, properties, body):
                seen(loads(body))
                if ack:
                    channel.basic_ack(method.delivery_tag)

            channel.basic_consume(queue, on_message, auto_ack=not ack)
            drain(counter, lambda: conn.process_data_events(time_limit=1))
        finally:
            conn.close()
        return counter.rate(queue, self.checksum)

    def consume_zamqp(self, ack, props=None):
        """zamqp's shared consumer; with ``props`` (signed) the queue is
        filled by a zamqp producer with the same props."""
        queue = self.new_queue('ack-zamqp' if ack else 'auto-zamqp')
        if props is None:
            self.fill(queue)
        else:
            self.fill_zamqp(queue, props)
        counter = Counter(self.n)
        consumer = AMQPConsumer(queue, props or self.props, counter.seen,
                                shared=True, ack=ack,
                                prefetch=self.prefetch if ack else None)
        run_until_done(consumer, counter)
        return counter.rate(queue, self.checksum)

    # round trips

    def round_trip_raw(self):
        requests, replies = self.new_queue('rt-req'), self.new_queue('rt-rep')
        server, client = self.raw_connection(), self.raw_connection()
        stop = threading.Event()
        serving = threading.Thread(target=self.serve_raw, daemon=True,
                                   args=(server, requests, replies, stop))
        serving.start()
        got = []
        try:
            channel = client.channel()
            channel.basic_consume(
                replies, callback=lambda m: got.append(pickle.loads(m.body)),
                no_ack=True)

            def send(obj):
                channel.basic_publish(
                    self.raw_message(pickle.dumps(obj, PROTOCOL)),
                    self.exchange, requests)

            def receive():
                while not got:
                    client.drain_events(timeout=STALL)
                return got.pop()
            return self.round_trips_of(send, receive)
        finally:
            stop.set()
            serving.join(2)
            client.close()
            server.close()

    def serve_raw(self, conn, requests, replies, stop):
        """The raw replier: sends every request back to ``replies``."""
        channel = conn.channel()

        def on_request(message):
            body = pickle.loads(message.body)
            channel.basic_publish(
                self.raw_message(pickle.dumps(body, PROTOCOL)),
                self.exchange, replies)

        channel.basic_consume(requests, callback=on_request, no_ack=True)
        while not stop.is_set():
            try:
                conn.drain_events(timeout=0.2)
            except socket.timeout:
                pass

    def round_trip_zamqp(self):
        requests, replies = self.new_queue('rt-req'), self.new_queue('rt-rep')
        replier = AMQPProducer(replies, self.props, confirm=False)
        sender = AMQPProducer(requests, self.props, confirm=False)
        got, arrived = [], threading.Event()

        def on_reply(body):
            got.append(body)
            arrived.set()

        threads = [AMQPThread(AMQPConsumer(
            queue, self.props, callback, shared=True, ack=False))
            for queue, callback in ((requests, replier), (replies, on_reply))]
        try:
            for thread in threads:
                thread.start()
                if thread.consumer.error is not None:
                    raise thread.consumer.error

            def send(obj):
                arrived.clear()
                sender(obj)

            def receive():
                if not arrived.wait(STALL):
                    raise Lost('zamqp round trip: no reply within '
                               f'{STALL} s')
                return got.pop()
            return self.round_trips_of(send, receive)
        finally:
            for thread in threads:
                thread.consumer.stop()
            for thread in threads:
                thread.stop()
            sender.close()
            replier.close()

    def round_trips_of(self, send, receive):
        """WARM_UP then M timed round trips; (p50 us, p99 us, CPU s per
        round trip)."""
        times = []
        cpu = None
        for i in range(WARM_UP + self.round_trips):
            if i == WARM_UP:
                cpu = time.process_time()
            obj = self.objects[i % self.n]
            start = time.perf_counter()
            send(obj)
            reply = receive()
            times.append(time.perf_counter() - start)
            if reply['id'] != obj['id']:
                raise Lost(f'round trip {i}: reply {reply["id"]} to request '
                           f'{obj["id"]}')
        cpu = (time.process_time() - cpu) / self.round_trips
        times = times[WARM_UP:]
        return (statistics.median(times) * 1e6,
                statistics.quantiles(times, n=100)[98] * 1e6, cpu)

    # fan-out

    def fan_out(self, kind):
        """FANOUT_PROCESSES consumer processes of ``kind`` ('raw' or
        'zamqp') each get the N messages a raw publisher sends here."""
        context = multiprocessing.get_context('spawn')
        ready, results = context.Queue(), context.Queue()
        processes = [context.Process(
            target=fan_consumer, args=(kind, self.url, self.fanout, self.n,
                                       ready, results), daemon=True)
            for _ in range(FANOUT_PROCESSES)]
        for process in processes:
            process.start()
        conn = self.raw_connection()
        try:
            for _ in processes:
                ready.get(timeout=60)
            channel = conn.channel()
            start = time.monotonic()
            for body in self.bodies:
                channel.basic_publish(self.raw_message(body), self.fanout, '')
            got = [results.get(timeout=3 * STALL + self.n / 1000)
                   for _ in processes]
        finally:
            conn.close()
            for process in processes:
                process.join(10)
                if process.is_alive():
                    process.terminate()
        for count, total, last, cpu in got:
            if count != self.n or total != self.checksum:
                raise Lost(f'fan-out {kind}: a consumer process got {count} '
                           f'of {self.n} messages (id checksum {total}, '
                           f'expected {self.checksum})')
        elapsed = max(last for _, _, last, _ in got) - start
        return self.n / elapsed, statistics.median(
            cpu for _, _, _, cpu in got) / self.n


class Tally:
    """Counts a fan-out consumer's messages; CLOCK_MONOTONIC (the same in
    every process) of the last one, CPU from the first to the last."""

    def __init__(self, n):
        self.n = n
        self.count = self.total = 0
        self.last = self.cpu = None
        self.done = threading.Event()

    def seen(self, body):
        self.total += body['id']
        self.count += 1
        if self.count == 1:
            self.cpu = time.process_time()
        if self.count == self.n:
            self.last = time.monotonic()
            self.cpu = time.process_time() - self.cpu
            self.done.set()

    def wait(self):
        """Until done, or STALL seconds without a message (after the
        first, which may take longer: the other processes start)."""
        last = -1
        while not self.done.wait(STALL):
            if self.count == last and self.count:
                return
            last = self.count

    def result(self):
        return self.count, self.total, self.last, self.cpu


def fan_consumer(kind, url, exchange, n, ready, results):
    """A fan-out consumer process: its own exclusive queue bound to the
    fanout ``exchange``; puts (count, id sum, last time, CPU) in
    ``results`` once it got ``n`` messages or stalled."""
    tally = Tally(n)
    props = AMQPProps(url=url, exchange=exchange, type='fanout')
    if kind == 'zamqp':
        consumer = AMQPConsumer(f'{exchange}.zamqp', props, tally.seen)
        thread = AMQPThread(consumer)
        thread.start()
        ready.put(os.getpid())
        tally.wait()
        thread.stop()
    else:
        conn = amqp.Connection(host=props.address, userid=props.user,
                               password=props.password,
                               virtual_host=props.virtual_host)
        conn.connect()
        channel = conn.channel()
        queue = f'{exchange}.raw.{uuid.uuid4().hex}'
        channel.queue_declare(queue, exclusive=True, auto_delete=True)
        channel.queue_bind(queue, exchange, '')
        loads = pickle.loads
        channel.basic_consume(queue, no_ack=True,
                              callback=lambda m: tally.seen(loads(m.body)))
        ready.put(os.getpid())
        drain(tally, lambda: conn.drain_events(timeout=1))
        conn.close()
    results.put(tally.result())


# the run

def plan(bench):
    """{measurement: [(row, function, reference row)]}; the ratio column
    of a row is its median over the reference row's."""
    b = bench
    raw = 'py-amqp'
    return {
        'publish': [
            (raw, b.publish_raw, raw),
            ('kombu', b.publish_kombu, raw),
            ('pika', b.publish_pika, raw),
            ('zamqp confirm=False', lambda: b.publish_zamqp(False), raw),
            ('zamqp default, to flush', b.publish_zamqp, raw)],
        'consume': [
            (raw, lambda: b.consume_raw(False), raw),
            ('kombu', lambda: b.consume_kombu(False), raw),
            ('pika', lambda: b.consume_pika(False), raw),
            ('zamqp', lambda: b.consume_zamqp(False), raw),
            ('ceiling, no ack', lambda: b.consume_ceiling(False), raw),
            ('ceiling, acks', lambda: b.consume_ceiling(True), raw)],
        'consume-ack': [
            (raw, lambda: b.consume_raw(True), raw),
            ('kombu', lambda: b.consume_kombu(True), raw),
            ('pika', lambda: b.consume_pika(True), raw),
            ('zamqp', lambda: b.consume_zamqp(True), raw)],
        'confirms': [
            ('py-amqp unconfirmed', b.publish_raw, 'py-amqp unconfirmed'),
            ('zamqp publish_many', b.publish_batched,
             'py-amqp unconfirmed')],
        'signed': [
            ('zamqp publish', lambda: b.publish_zamqp(False),
             'zamqp publish'),
            ('zamqp publish signed',
             lambda: b.publish_zamqp(False, b.signed_props),
             'zamqp publish'),
            ('zamqp consume', lambda: b.consume_zamqp(False, b.props),
             'zamqp consume'),
            ('zamqp consume signed',
             lambda: b.consume_zamqp(False, b.signed_props),
             'zamqp consume')],
        'roundtrip': [
            (raw, b.round_trip_raw, raw),
            ('zamqp', b.round_trip_zamqp, raw)],
        'fanout': [
            (f'{raw} x{FANOUT_PROCESSES}', lambda: b.fan_out('raw'),
             f'{raw} x{FANOUT_PROCESSES}'),
            (f'zamqp x{FANOUT_PROCESSES}', lambda: b.fan_out('zamqp'),
             f'{raw} x{FANOUT_PROCESSES}')],
    }


def run(args):
    size = len(pickle.dumps(payload(args.messages - 1), PROTOCOL))
    print(f'zamqp ({os.path.dirname(zamqp.__file__)}) vs py-amqp '
          f'{amqp.__version__}, kombu {kombu.__version__}, pika '
          f'{pika.__version__}, {AMQPProps(url=args.url).url()}\n'
          f'{args.messages} messages of {size} bytes (pickled dict) per '
          f'measurement, {args.round_trips} round trips, {args.rounds} '
          f'rounds: {", ".join(args.only)}\n{source_state()}', flush=True)
    bench = Compare(args.url, args.messages, args.round_trips)
    tests = {name: rows for name, rows in plan(bench).items()
             if name in args.only}
    results = {name: {row: [] for row, _, _ in rows}
               for name, rows in tests.items()}
    started = time.monotonic()
    try:
        for rnd in range(args.rounds):
            for name, rows in tests.items():
                for row, test, _ in rotate(rows, rnd):
                    results[name][row].append(test())
            print(f'round {rnd + 1} done, {time.monotonic() - started:.0f} s',
                  flush=True)
    finally:
        bench.cleanup()
    print(f'took {time.monotonic() - started:.0f} s; at the end: '
          f'{source_state()}')
    return {name: (tests[name], results[name]) for name in tests}


def median(values, index=0):
    return statistics.median(value[index] for value in values)


def report(results):
    """Print the table and the summary line; return the key ratios."""
    print()
    print(f'{"":<27} {"msg/s":>11}  {"ratio to":<25} {"/pika":>5} '
          f'{"CPU us":>7}   per-round')
    ratios = {}
    for name, (rows, measured) in results.items():
        print(TITLES[name])
        pika_rate = median(measured['pika']) if 'pika' in measured else None
        for row, _, ref in rows:
            rounds = measured[row]
            value = median(rounds)
            ratio = value / median(measured[ref])
            ratios[name, row] = ratio
            versus = f'{value / pika_rate:5.2f}' if pika_rate else ''
            shown = f'{value:,.0f}' if name != 'roundtrip' else \
                f'{value:,.0f}/{median(rounds, 1):,.0f}'
            per_round = ' '.join(f'{r[0]:,.0f}' for r in rounds)
            cpu = median(rounds, -1) * 1e6
            print(f'  {row:<25} {shown:>11}  {ratio:5.2f} {ref:<19} '
                  f'{versus:>5} {cpu:>7.1f}   {per_round}')
    print('Medians over the rounds. msg/s: messages per second (round trip:'
          ' p50/p99 in us,\nper round the p50; its ratio is of the p50s, '
          'above 1 when slower; fan-out: N\nover the time until the last '
          'process got its last message); /pika: msg/s over\npika\'s; CPU '
          'us: client CPU per message (round trip: per round trip, both '
          'sides;\nfan-out: per message in one consumer process).')
    summary(ratios)
    return ratios


def summary(ratios):
    def get(name, row, text):
        ratio = ratios.get((name, row))
        return f'{text} {"n/a" if ratio is None else f"{ratio:.2f}"}'

    consume = ratios.get(('consume', 'zamqp'))
    pika_ratio = ratios.get(('consume', 'pika'))
    over_pika = 'n/a' if consume is None else f'{consume / pika_ratio:.2f}'
    fan = f'zamqp x{FANOUT_PROCESSES}'
    print(', '.join([
        get('publish', 'zamqp confirm=False', 'publish zamqp/raw'),
        f'consume zamqp/pika {over_pika}',
        get('roundtrip', 'zamqp', 'round-trip p50 zamqp/raw'),
        get('signed', 'zamqp publish signed', 'signed/unsigned publish')
        + get('signed', 'zamqp consume signed', ' and consume'),
        get('confirms', 'zamqp publish_many',
            'batched confirms/raw unconfirmed'),
        get('fanout', fan, 'fan-out zamqp/raw')]))


def main(argv=None):
    parser = parser_for(__doc__, rounds=5)
    parser.add_argument('--round-trips', type=int, default=2000,
                        help='timed round trips per round (default 2000)')
    parser.add_argument('--only', default=','.join(MEASUREMENTS),
                        help='comma-separated measurements (default all: '
                        f'{",".join(MEASUREMENTS)})')
    parser.add_argument('--quick', action='store_true',
                        help='smoke test: 2000 messages, 500 round trips, '
                        '2 rounds')
    args = parser.parse_args(argv)
    if args.quick:
        args.messages, args.rounds = 2000, 2
        args.round_trips = min(args.round_trips, 500)
    args.only = [name.strip() for name in args.only.split(',')
                 if name.strip()]
    unknown = set(args.only) - set(MEASUREMENTS)
    if unknown or not args.only:
        parser.error(f'--only takes {", ".join(MEASUREMENTS)}')
    args.only = [name for name in MEASUREMENTS if name in args.only]
    if args.messages < 2 or args.rounds < 1 or args.round_trips < 2:
        parser.error('need --messages >= 2, --rounds >= 1, '
                     '--round-trips >= 2')
    return execute(run, report, args)


if __name__ == '__main__':
    sys.exit(main())
