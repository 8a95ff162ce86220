"""Verdicts on received messages: acknowledge, retry, dead-letter, drop."""
import collections
import enum

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


#: Header a quorum queue adds to a redelivered message: earlier deliveries.
DELIVERY_COUNT = 'x-delivery-count'


class RetryPolicy:
    """Decides the verdict of a refused message or a failed handler.

    A failing handler's message is retried while it failed fewer than
    ``max_retries`` times (acknowledging consumers only), then given up:
    dead-lettered to ``dead_letter_exchange`` if there is one, else
    dropped. A refused message (it cannot be decoded or checked) is given
    up at once. Failures are counted from the ``x-zamqp-retries`` header
    zamqp's retry copies carry, a quorum queue's ``x-delivery-count``,
    and the deliveries this process saw lost mid-handling
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
        """How often handling ``message`` failed before."""
        counted = deadletter.retries(message)
        headers = message.headers or {}
        delivered = headers.get(DELIVERY_COUNT)
        if isinstance(delivered, int) and delivered > counted:
            counted = delivered
        return max(counted, self.redeliveries.count(message))

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


def key(message):
    """What identifies a delivery across redeliveries without decoding
    it: the fingerprint zamqp.frames gives, else the message id."""
    fingerprint = getattr(message, 'zamqp_key', None)
    if fingerprint is not None:
        return fingerprint
    return (message.properties or {}).get('message_id') or id(message)


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
        entry = self._lost.pop(key(message), None) or [0, reason]
        entry[0] += 1
        entry[1] = reason
        self._lost[key(message)] = entry
        while len(self._lost) > self.size:
            self._lost.popitem(last=False)
        return entry[0]

    def count(self, message):
        if not self._lost:
            return 0
        entry = self._lost.get(key(message))
        return entry[0] if entry else 0

    def reason(self, message):
        entry = self._lost.get(key(message))
        return entry[1] if entry else ''

    def forget(self, message):
        if self._lost:
            self._lost.pop(key(message), None)

    def __len__(self):
        return len(self._lost)
