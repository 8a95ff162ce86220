"""A consumer in a process of its own, for test_processes and test_runner.

Usage: python listener.py MODE URL EXCHANGE QUEUE COUNT TIMEOUT

MODE is ``messages`` (print each body), ``events`` (an AMQPEventCallback
consumer; print each Ping notified as a zope event) or ``runner`` (the
same through zamqp.runner.create_consumer, left to stop at exit).
Prints ``READY <queue_name>`` once consuming, then one JSON line per
message, and exits after COUNT messages or TIMEOUT seconds. In runner
mode the last line lists the zamqp threads left after zamqp's exit
handlers ran.
"""
import atexit
import json
import sys
import threading

import zope.event

from zamqp import AMQPConsumer
from zamqp import AMQPEventCallback
from zamqp import AMQPProps
from zamqp import AMQPThread
from zamqp import runner
from zamqp.testhelpers import zamqp_threads
from zamqp.tests.eventtypes import Ping


def main(mode, url, exchange, queue, count, timeout):
    count, timeout = int(count), float(timeout)
    props = AMQPProps(url=url, exchange=exchange)
    lock = threading.Lock()
    received = []
    done = threading.Event()

    def emit(obj):
        with lock:
            received.append(obj)
            print(json.dumps(obj), flush=True)
            if len(received) >= count:
                done.set()

    def on_event(event):
        if isinstance(event, Ping):
            emit({'ping': event.name})

    if mode == 'messages':
        consumer = AMQPConsumer(queue, props, emit)
        thread = AMQPThread(consumer)
        thread.start()
    elif mode == 'events':
        zope.event.subscribers.append(on_event)
        consumer = AMQPConsumer(queue, props, AMQPEventCallback(),
                                allow=[Ping])
        thread = AMQPThread(consumer)
        thread.start()
    elif mode == 'runner':
        # registered first, so it runs after the runner's exit handler
        atexit.register(lambda: print(json.dumps(
            {'threads at exit': [t.name for t in zamqp_threads()]}),
            flush=True))
        zope.event.subscribers.append(on_event)
        thread = runner.create_consumer(props, queue, allow=[Ping])
        consumer = thread.consumer
    else:
        raise SystemExit(f'unknown mode {mode!r}')
    if consumer.error is not None:
        raise SystemExit(f'consumer failed: {consumer.error}')
    print('READY', consumer.queue_name, flush=True)
    if count:
        done.wait(timeout)
    if mode != 'runner':
        thread.stop()
    # runner mode returns with the consumer running: atexit must stop it.


if __name__ == '__main__':
    main(*sys.argv[1:])
