"""Verdicts on received messages: acknowledge, retry, dead-letter, drop."""
import collections
import enum
import zlib

from zamqp import deadletter


class Verdict(enum.Enum):
    """What the consumer does with a message once its handler is done.

    ACK acknowledges it (handled, or taken by a consumer that does not
    ack); RETRY puts a copy back in the queue with its retry count
    raised; DEAD sends a copy to the dead-letter exchange; DROP rejects
    it without requeueing (lost, and logged as lost).
    """

    ACK = 'ack'
    RETRY = 'retry'
    DEAD = 'dead'
    DROP = 'drop'


class RetryPolicy:
    """Decides the verdict of a refused message or a failed handler.

    A failing handler's message is retried while it failed fewer than
    ``max_retries`` times (acknowledging consumers only), then given up:
    dead-lettered to ``dead_letter_exchange`` if there is one, else
    dropped. A refused message (it cannot be decoded or checked) is given
    up at once. Failures are counted from the ``x-zamqp-retries`` header
    zamqp's retry copies carry and the deliveries this process saw lost
    mid-handling
    (``redeliveries``: a broker's consumer_timeout, a crash), whichever
    is highest.
    """

    def __init__(self, ack, max_retries, dead_letter_exchange,
                 redeliveries=None):
        self.ack = ack
        self.max_retries = max_retries
        self.dead_letter_exchange = dead_letter_exchange
        self.redeliveries = redeliveries if redeliveries is not None \
            else Redeliveries()

    def failures(self, message):
        """How often handling ``message`` failed before: its retry copies
        and the deliveries of it this consumer lost mid-handling. (A
        quorum queue's ``x-delivery-count`` is not used: it also counts
        prefetched messages returned unhandled when a channel closes.)"""
        return max(deadletter.retries(message),
                   self.redeliveries.count(message))

    def exhausted(self, message):
        """The fate text if ``message`` was lost mid-handling too often to
        be handled again, else None (checked before it is decoded)."""
        if not message.delivery_info.get('redelivered'):
            return None
        lost = self.redeliveries.count(message)
        if lost <= self.max_retries:
            return None
        return (f'was lost mid-handling {lost} times '
                f'({self.redeliveries.reason(message)})')

    def on_refused(self):
        """Verdict and fate text for a message that was refused."""
        return self.give_up()

    def on_failure(self, message):
        """Verdict and fate text for a message whose handler raised."""
        failures = self.failures(message)
        if self.ack and failures < self.max_retries:
            return Verdict.RETRY, (f'retried (retry {failures + 1} of '
                                   f'{self.max_retries})')
        verdict, fate = self.give_up()
        if self.ack:
            fate += f' after {failures + 1} attempts'
        return verdict, fate

    def give_up(self):
        if self.dead_letter_exchange:
            return Verdict.DEAD, \
                f'dead-lettered to {self.dead_letter_exchange!r}'
        if self.ack:
            return Verdict.DROP, 'dropped'
        return Verdict.DROP, 'lost (the consumer does not ack)'


def keys(message):
    """What identifies a delivery across redeliveries without decoding
    it: its message id (zamqp's producers always set one); without one,
    the fingerprint of its content header (zamqp.frames) and the CRC of
    its raw body (the broker may change the header on redelivery, as a
    quorum queue's ``x-delivery-count``)."""
    message_id = (message.properties or {}).get('message_id')
    if message_id:
        return [('id', message_id)]
    found = []
    fingerprint = getattr(message, 'zamqp_key', None)
    if fingerprint is not None:
        found.append(('frames', fingerprint))
    body = getattr(message, 'body', None)
    if isinstance(body, (bytes, bytearray)) and body:
        found.append(('body', len(body), zlib.crc32(body)))
    return found or [('object', id(message))]


class Redeliveries:
    """Deliveries this consumer lost while handling them.

    A message whose channel closed under its running handler (the
    broker's consumer_timeout) or that was in hand when the consumer
    crashed comes back with the redelivered flag; classic queues do not
    count such redeliveries, so the consumer does: ``lost(message,
    reason)`` counts one, ``count(message)`` tells how many. At most
    ``size`` messages are remembered (the oldest are forgotten).
    """

    def __init__(self, size=1000):
        self.size = size
        self._lost = collections.OrderedDict()   # key -> [count, reason]

    def lost(self, message, reason):
        """Count one loss of ``message``; return how many it had."""
        count = self.count(message) + 1
        for key in keys(message):
            self._lost.pop(key, None)
            self._lost[key] = [count, reason]
        while len(self._lost) > self.size:
            self._lost.popitem(last=False)
        return count

    def count(self, message):
        if not self._lost:
            return 0
        return max(self._lost.get(key, (0,))[0] for key in keys(message))

    def reason(self, message):
        for key in keys(message):
            if key in self._lost:
                return self._lost[key][1]
        return ''

    def forget(self, message):
        if self._lost:
            for key in keys(message):
                self._lost.pop(key, None)

    def __len__(self):
        return len(self._lost)
