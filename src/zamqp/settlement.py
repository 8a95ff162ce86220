"""Settlement: carry out the verdicts on messages of one channel, in order."""
import logging

from zamqp import deadletter
from zamqp.connection import CONNECTION_LOST
from zamqp.logtext import loggable
from zamqp.logtext import message_id
from zamqp.policy import Verdict

logger = logging.getLogger(__name__)


class Settlement:
    """Acknowledgements and copies for the messages of ``channel``.

    ``settle(verdict, message, error)`` is called in delivery order.
    Acknowledgements are batched: ACKs accumulate and go out as one
    ``basic_ack(multiple=True)`` on ``flush()`` (the session flushes
    when idle or every ``batch`` messages); any other verdict flushes
    them first, so the broker sees every decision in order. RETRY
    publishes a copy to ``queue_name`` (through the default exchange),
    DEAD one to ``dead_letter_exchange`` (with ``x-zamqp-error``), each
    fitted into ``frame_max``, then acknowledges the original; DROP
    rejects it without requeueing, as does a RETRY or DEAD whose copy
    cannot be written (logged). Without ``ack`` messages were
    acknowledged when taken: only the copies are published. A copy is
    published before its original is acknowledged, on the same channel,
    so a lost connection can duplicate it but not lose it. Counts go to
    ``status`` (zamqp.status.ConsumerStatus).

    On a stream (``stream=True``) acknowledgements only give the broker
    credit to send more: DROP acknowledges too (a stream neither
    requeues nor discards), a dead-letter copy is published with a
    publisher confirm (waiting ``confirm_timeout`` seconds at most) so
    that the reader's position never passes a copy the broker did not
    take, and ``settled(message)`` is called once each message's verdict
    is carried out (the reader's position follows it).
    """

    def __init__(self, channel, queue, queue_name, ack, status,
                 dead_letter_exchange=None, frame_max=None, batch=25,
                 stream=False, confirm_timeout=None, settled=None):
        self.channel = channel
        self.queue = queue
        self.queue_name = queue_name
        self.ack = ack
        self.status = status
        self.dead_letter_exchange = dead_letter_exchange
        self.frame_max = frame_max
        self.batch = batch
        self.stream = stream
        self.confirm_timeout = confirm_timeout
        self.settled = settled
        self.pending = 0        # ACKs not sent yet ...
        self._tag = None        # ... all up to this delivery tag

    def settle(self, verdict, message, error=None):
        if verdict is Verdict.ACK:
            self.pending += 1
            self._tag = message.delivery_tag
            if self.settled is not None:
                self.settled(message)
            return
        self.flush()
        channel = self.channel
        if verdict is not Verdict.DROP:
            verdict = self._copy(verdict, message, error)
        if verdict is Verdict.DROP:
            self.status.count('dropped')
        if self.settled is not None:
            self.settled(message)
        if not self.ack:
            return
        if verdict is Verdict.DROP and not self.stream:
            channel.basic_reject(message.delivery_tag, False)
        else:
            channel.basic_ack(message.delivery_tag)

    def _copy(self, verdict, message, error):
        """Publish the retry or dead-letter copy; return the verdict
        carried out (DROP when no copy can be made of this message)."""
        try:
            if verdict is Verdict.RETRY:
                self.channel.basic_publish(
                    deadletter.retry_copy(message, self.frame_max), '',
                    self.queue_name)
                self.status.count('retried')
            elif self.stream:
                self.channel.basic_publish_confirm(
                    deadletter.dead_letter(message, error, self.queue,
                                           self.frame_max),
                    self.dead_letter_exchange, self.queue,
                    confirm_timeout=self.confirm_timeout)
                self.status.count('dead_lettered')
            else:
                self.channel.basic_publish(
                    deadletter.dead_letter(message, error, self.queue,
                                           self.frame_max),
                    self.dead_letter_exchange, self.queue)
                self.status.count('dead_lettered')
            return verdict
        except CONNECTION_LOST:
            raise
        except Exception as exc:    # a copy py-amqp cannot write
            logger.error('consumer %s: cannot publish the %s copy of message '
                         '%s (%s: %s); the message is dropped instead',
                         self.queue_name, verdict.value, message_id(message),
                         type(exc).__name__, loggable(exc, 200))
            return Verdict.DROP

    def due(self, idle):
        """Whether the batched ACKs should go out now."""
        return self.pending and (idle or self.pending >= self.batch)

    def flush(self):
        """Acknowledge every ACKed message so far, at once."""
        if self.pending:
            self.channel.basic_ack(self._tag, multiple=True)
            self.pending, self._tag = 0, None
