"""The worker thread: runs a consumer's handlers, one message at a time."""
import collections
import logging
import os
import queue
import threading
import time

logger = logging.getLogger(__name__)
_local = threading.local()


def current_delivery():
    """The Delivery this worker thread handles now, or None."""
    return getattr(_local, 'delivery', None)


class Delivery:
    """A message in hand, as its handler sees it.

    ``abandoned()`` becomes True once the consumer gave up on the message
    while its handler still runs: the stop deadline passed or its channel
    was lost, so the message goes back to the queue and will be
    delivered again. A handler with effects of its own (a ZODB
    transaction) must then not commit them (zamqp.zope.context aborts).
    """

    __slots__ = ('message', '_abandoned')

    def __init__(self, message):
        self.message = message
        self._abandoned = False

    def abandon(self):
        self._abandoned = True

    def abandoned(self):
        return self._abandoned


class Worker(threading.Thread):
    """Runs ``consumer.handle(message)`` for each message handed over.

    The consumer thread puts lists of messages in ``inbox`` (None ends
    the worker); ``handle`` appends results to ``results``; after each
    message ``consumer.wake(last)`` may wake the consumer thread through
    the pipe. Supervised: nothing raised while handling a message ends
    the thread; such an error is zamqp's own (handle catches the
    handler's), it is logged with its traceback and handed to
    ``consumer.crashed(message, exc)``, which decides the message's fate.
    """

    def __init__(self, consumer, name):
        super().__init__(name=name, daemon=True)
        self.consumer = consumer
        self.inbox = queue.SimpleQueue()    # lists of messages
        self.results = collections.deque()  # (verdict, message, error)
        self.current = None                 # the Delivery in hand
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        self.sleeping = False   # the consumer thread waits in poll()

    def run(self):
        get = self.inbox.get
        try:
            while True:
                batch = get()
                if batch is None:
                    return
                last = len(batch) - 1
                for n, message in enumerate(batch):
                    self._one(message)
                    self.wake(n == last)
        finally:
            self.current = None

    def _one(self, message):
        consumer = self.consumer
        try:
            if not consumer.begin(message):
                return
            self.current = _local.delivery = Delivery(message)
            try:
                consumer.handle(message)
            finally:
                self.current = _local.delivery = None
                consumer.end()
        except BaseException as exc:    # zamqp's own error: never fatal
            consumer.crashed(message, exc)

    def wake(self, last):
        """Wake the consumer thread for results to send."""
        if self.sleeping and (last or len(self.results)
                              >= self.consumer.ack_batch):
            try:
                os.write(self.wake_w, b'.')
            except OSError:
                return
            time.sleep(0)   # let the consumer thread have the GIL now

    def drain_wakeups(self):
        try:
            os.read(self.wake_r, 4096)
        except (BlockingIOError, OSError):
            pass

    def abandon(self):
        """Give up on the message in hand (it goes back to the queue)."""
        delivery = self.current
        if delivery is not None:
            delivery.abandon()
        return delivery

    def close(self):
        """Close the wake-up pipe (once the thread has ended)."""
        self.sleeping = False
        for fd in (self.wake_r, self.wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
