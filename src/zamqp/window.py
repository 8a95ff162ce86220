"""ConfirmWindow: the messages a producer sent and the broker has not
confirmed yet, in publishing order.

No network here: the producer feeds it the delivery tags it published
with and the broker's ``basic.ack`` / ``basic.nack`` / ``basic.return``,
and asks it what to send again after a reconnect and what timed out.

On a confirm-mode channel the broker numbers the messages 1, 2, 3 ...
(delivery tags) and confirms them, usually several at once
(``multiple``: every tag up to this one). The messages of the current
channel wait in a deque in tag order, so the tag of ``pending[i]`` is
``first_tag + i``: a multiple ack pops from the left, a single ack marks
one record and pops what is settled from the left. When the channel is
lost, its unconfirmed messages become ``orphans``, to be published again,
first and in order, on the next channel; messages that could not be
sent yet (the broker was unreachable) wait there too.

Records do not expire here: a record nobody waits for stays until the
broker acks, nacks or returns it, or until the producer gives it up
(``give_up``, at ``flush``/``close``). ``stalled(now)`` tells the
producer that the oldest record of the channel waits longer than it
should for its confirm (its ``due`` time, set at each send).
"""
import collections

#: Record states that end a record's wait.
ACK, NACK, RETURNED, TIMEOUT, FAILED = (
    'ack', 'nack', 'returned', 'timeout', 'failed')


class Record:
    """One published message waiting for its confirm.

    ``waited``: a caller will look at ``state`` and raise (a
    ``confirm=True`` call, a batch, a flush); otherwise the window
    reports a failure through its ``report`` function.
    """

    __slots__ = ('msg', 'key', 'batch', 'state', 'reply', 'sends',
                 'deadline', 'waited', 'due')

    def __init__(self, msg, key, deadline, waited=False, batch=None):
        self.msg = msg
        self.key = key
        self.batch = batch
        self.deadline = deadline
        self.waited = waited
        self.state = None
        self.reply = None
        self.sends = 0
        self.due = deadline

    @property
    def message_id(self):
        return self.msg.properties.get('message_id')

    def resolve(self, state):
        """Settle the record once; later answers are ignored."""
        if self.state is not None:
            return False
        self.state = state
        if self.batch is not None:
            self.batch.outstanding -= 1
        return True

    def __repr__(self):
        return f'<Record {self.message_id} {self.state or "pending"}>'


class ConfirmWindow:
    """At most ``size`` unconfirmed records of one producer.

    ``report(records, state)`` is called with records that ended
    without an ack and that no caller waits for (to be logged).
    ``stats`` (a zamqp.status.ProducerStats, optional) counts what is
    sent, resent and settled.
    """

    #: The ProducerStats counter of each final state of a record.
    COUNTERS = {ACK: 'confirmed', NACK: 'nacked', RETURNED: 'returned',
                TIMEOUT: 'given_up', FAILED: 'given_up'}

    def __init__(self, size, report=None, stats=None):
        if size < 1:
            raise ValueError(f'window must be at least 1, got {size!r}')
        self.size = size
        self.report = report
        self.stats = stats
        self.pending = collections.deque()  # sent on this channel
        self.next_tag = 1
        self.orphans = collections.deque()  # of lost channels, to resend
        self.returned = {}                  # message id -> reply text

    def __len__(self):
        return len(self.pending) + len(self.orphans)

    @property
    def full(self):
        return len(self.pending) + len(self.orphans) >= self.size

    @property
    def first_tag(self):
        return self.next_tag - len(self.pending)

    def sent(self, record, due=None):
        """``record`` was published with the next delivery tag; its
        confirm is expected by ``due`` (monotonic time)."""
        record.sends += 1
        if self.stats is not None:
            self.stats.count('published' if record.sends == 1 else 'resent')
        if due is not None:
            record.due = due
        self.pending.append(record)
        self.next_tag += 1

    def ack(self, tag, multiple=False):
        self.settle(tag, multiple, ACK)

    def nack(self, tag, multiple=False):
        self.settle(tag, multiple, NACK)

    def settle(self, tag, multiple, state):
        pending = self.pending
        failed = []
        if multiple:
            for _ in range(min(tag - self.first_tag + 1, len(pending))):
                self._resolve(pending.popleft(), state, failed)
        else:
            index = tag - self.first_tag
            if 0 <= index < len(pending):
                self._resolve(pending[index], state, failed)
            while pending and pending[0].state is not None:
                pending.popleft()
        if failed:
            self._report(failed, failed[0].state)

    def _resolve(self, record, state, failed):
        reply = self.returned.pop(record.message_id, None) \
            if self.returned else None
        if reply is not None and state == ACK:
            record.reply, state = reply, RETURNED
        if not record.resolve(state):
            return
        self._count(state)
        if state != ACK and not record.waited:
            failed.append(record)

    def _count(self, state):
        if self.stats is not None:
            self.stats.count(self.COUNTERS[state])

    def returned_message(self, message_id, reply):
        """basic.return: its ack follows; it then counts as returned."""
        self.returned[message_id] = reply

    def channel_lost(self):
        """The channel is gone: what it did not confirm is sent again."""
        unconfirmed = [r for r in self.pending if r.state is None]
        unconfirmed.extend(r for r in self.orphans if r.state is None)
        self.orphans = collections.deque(unconfirmed)
        self.pending.clear()
        self.next_tag = 1
        self.returned.clear()
        return len(unconfirmed)

    def queue(self, record):
        """Keep ``record``, not sent yet, to send after the orphans."""
        self.orphans.append(record)

    def next_orphan(self, now=None):
        """The next record to publish again, or None (drops settled
        ones)."""
        orphans = self.orphans
        while orphans:
            if orphans[0].state is None:
                return orphans[0]
            orphans.popleft()
        return None

    def stalled(self, now):
        """True if the oldest unsettled record of the channel was due
        to be confirmed by ``now``."""
        pending = self.pending
        while pending and pending[0].state is not None:
            pending.popleft()
        return bool(pending) and pending[0].due <= now

    def give_up(self, records, state=TIMEOUT):
        """A waiting caller ends its wait: unsettled ``records`` fail
        and leave the window (a placeholder keeps a delivery tag's
        place on the channel until its confirm or the channel's end)."""
        for record in records:
            if record.resolve(state):
                self._count(state)
        for queue in (self.orphans, self.pending):
            while queue and queue[0].state is not None:
                queue.popleft()

    def unsettled(self):
        """Every record not settled yet, in publishing order."""
        return [r for r in list(self.orphans) + list(self.pending)
                if r.state is None]

    def _report(self, records, state):
        if self.report is not None:
            self.report(records, state)
