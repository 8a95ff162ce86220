"""Publish on commit: hold messages until the current transaction commits.

A transactional producer (``AMQPProducer(..., transactional=True)``, every
``<zamqp:producer>`` unless ``transactional="false"``, and the shared
producers of ``AMQPEvent``) hands each message to ``defer``. When the
calling thread has an *active transaction*, the message waits in that
transaction's outbox: a successful commit publishes the outbox in order,
an abort or a failed commit drops it. Without an active transaction
``defer`` declines and the producer publishes at once.

The active transaction
    The ``transaction`` package is optional and never imported here: if
    nothing imported it, no transaction can be running. Otherwise the
    transaction is the one ``transaction.manager`` (the thread-local
    manager Zope and ZODB use) currently holds, asked the public way:
    ``ITransactionManager.registerSynch`` calls a synchronizer's
    ``newTransaction`` with "the active transaction" if there is one.
    Unlike ``transaction.get()`` this never creates a transaction. So an
    explicit manager is in a transaction from ``begin()`` to its
    ``commit()``/``abort()``; an implicit (default) manager from
    ``begin()`` *or* the first ``transaction.get()`` (which ZODB calls when
    an object changes) to the end of that transaction. A transaction
    whose commit already succeeded or failed (a synchronizer's
    ``afterCompletion``, another after-commit hook) no longer holds
    messages: they go at once. Messages from before-commit hooks and from
    the commit itself still wait for its outcome.

    A producer whose ``begins_transaction`` is true (every transactional
    ``<zamqp:producer>`` of zamqp.zope) does not publish at once outside
    a transaction: it begins one of the implicit manager, as a ZODB
    change would, so that a zconsole script's messages wait for its
    ``transaction.commit()`` and go nowhere if it aborts (an explicit
    manager without ``begin()`` still publishes at once).

    A thread that began a transaction (or called ``transaction.get()``)
    and never ends it keeps its messages forever; at exit, messages of
    transactions that were never committed are logged at WARNING. Code
    that runs in an abort hook still runs inside the aborting
    transaction: its messages are dropped with it.

Savepoints
    The outbox joins the transaction as a data manager, so rolling back a
    savepoint drops the messages queued after it, and ``optimistic``
    savepoints are not needed for it.

Confirms
    A producer made with ``confirm=True`` publishes the messages of one
    transaction, in call order, as one batch (``producer.batch()``): it
    sends them all and then waits once for the broker's confirms. A
    default producer (``confirm=None``) does not wait: the messages go
    through its ``publish_committed``, join its window of unconfirmed
    messages and are published again after a reconnect until the broker
    confirms them; one the broker nacks (or returns, with mandatory), or
    still unconfirmed when the producer is closed, is logged at ERROR
    with its id.

    A default producer does not hold up the committing thread when the
    broker is down: it tries to connect at most once (not at all while it
    knows the broker is unreachable) and otherwise keeps the message,
    unsent, in its window; a background thread of the producer
    reconnects with backoff and sends it first. A full window (the
    broker unreachable for long) makes the message fail at once, logged
    with its id.

Failures
    The after-commit hook never raises: a message that cannot be
    published (or queued, see above) is logged on the
    ``zamqp`` logger with its message id and exchange, and the following
    messages are still attempted; messages the broker nacked, returned
    or did not confirm in time are logged with their ids. The commit has
    happened by then; there is no way to take it back.
"""
import atexit
import logging
import sys
import weakref

from zamqp.exceptions import ConnectionFailed
from zamqp.exceptions import ZAMQPError

logger = logging.getLogger(__name__)

#: Values of ``transaction._transaction.Status`` (a transaction's
#: ``status``) after a commit ended, and while it runs.
_COMMIT_OVER = ('Committed', 'Commit failed')
_COMMITTING = 'Committing'


def active_transaction():
    """The transaction of this thread that holds messages, or None."""
    return _active()[1]


def _active():
    """``transaction.manager`` and its active transaction, or Nones."""
    module = sys.modules.get('transaction')
    manager = getattr(module, 'manager', None)
    if manager is None:
        return None, None
    probe = _Probe()
    manager.registerSynch(probe)
    try:
        txn = probe.transaction
    finally:
        manager.unregisterSynch(probe)
    if txn is None or getattr(txn, 'status', None) in _COMMIT_OVER:
        return None, None
    return manager, txn


def _begin():
    """Begin a transaction of the implicit ``transaction.manager``, as a
    ZODB change would; Nones when there is none or it is explicit."""
    module = sys.modules.get('transaction')
    manager = getattr(module, 'manager', None)
    if manager is None or getattr(manager, 'explicit', False):
        return None, None
    return manager, manager.get()


def defer(producer, msg, routing_key):
    """Queue ``msg`` to publish when this thread's transaction commits.

    Returns False, queuing nothing, when no transaction is active: the
    caller publishes at once. After a commit the message goes through
    ``producer.publish_now(msg, routing_key)``, inside a
    ``producer.batch()`` when the producer has one.
    """
    manager, txn = _active()
    if txn is None and getattr(producer, 'begins_transaction', False):
        manager, txn = _begin()
    if txn is None:
        return False
    try:
        outbox = txn.data(Outbox)
    except KeyError:
        outbox = Outbox(txn, manager)
        txn.set_data(Outbox, outbox)
    outbox.add(txn, producer, msg, routing_key)
    return True


def pending(txn=None):
    """The (producer, message, routing key) held by ``txn`` (default: the
    active transaction), in publishing order."""
    txn = active_transaction() if txn is None else txn
    try:
        return list(txn.data(Outbox).messages)
    except (AttributeError, KeyError):
        return []


class _Probe:
    """A synchronizer that only notes the transaction it is told about."""

    transaction = None

    def newTransaction(self, txn):
        self.transaction = txn

    def beforeCompletion(self, txn):
        pass

    def afterCompletion(self, txn):
        pass


class Outbox:
    """The messages of one transaction, published after it committed.

    It registers one after-commit hook and joins the transaction as a
    data manager that writes nothing: its ``abort`` (a transaction abort,
    a failed commit, the rollback of a savepoint made before it joined)
    and its savepoints' rollbacks drop messages.
    """

    def __init__(self, txn, transaction_manager=None):
        self.messages = []
        self.joined = False
        self.transaction_manager = transaction_manager
        txn.addAfterCommitHook(self.after_commit)
        _outboxes.add(self)

    def add(self, txn, producer, msg, routing_key):
        if not self.joined and getattr(txn, 'status', None) != _COMMITTING:
            txn.join(self)      # a committing transaction refuses joins
            self.joined = True
        self.messages.append((producer, msg, routing_key))

    def after_commit(self, committed):
        messages, self.messages = self.messages, []
        if not committed:
            _dropped(messages, 'their transaction failed to commit')
            return
        batches = {}        # id(producer) -> its open batch, or None
        try:
            for producer, msg, key in messages:
                self._publish(batches, producer, msg, key)
        finally:
            for producer, batch in batches.values():
                _close_batch(producer, batch)

    def _publish(self, batches, producer, msg, key):
        entry = batches.get(id(producer))
        if entry is None:
            entry = batches[id(producer)] = (producer, _open_batch(producer))
        batch = entry[1]
        try:
            if isinstance(batch, Exception):    # do not wait connect_timeout
                raise batch                     # again
            publish = getattr(producer, 'publish_committed', None) or \
                producer.publish_now
            publish(msg, key)
        except Exception as exc:    # never into the transaction
            if isinstance(exc, ConnectionFailed):
                batches[id(producer)] = (producer, exc)
                _close_batch(producer, batch)
            logger.error(
                'message %s to exchange %r (routing key %r) was not '
                'published after its transaction committed: %s',
                _message_id(msg), _exchange(producer), key, exc,
                exc_info=not isinstance(exc, ZAMQPError))

    # IDataManager: nothing to write, only messages to forget

    def abort(self, txn):
        messages, self.messages = self.messages, []
        self.joined = False
        _dropped(messages, 'their transaction was aborted')

    def tpc_begin(self, txn):
        pass

    def commit(self, txn):
        pass

    def tpc_vote(self, txn):
        pass

    def tpc_finish(self, txn):
        pass

    def tpc_abort(self, txn):
        self.abort(txn)

    def sortKey(self):
        return f'zamqp.transactional:{id(self)}'

    def savepoint(self):
        return _Savepoint(self, len(self.messages))

    def __repr__(self):
        return f'<zamqp Outbox of {len(self.messages)} messages>'


class _Savepoint:

    def __init__(self, outbox, count):
        self.outbox = outbox
        self.count = count

    def rollback(self):
        messages = self.outbox.messages
        dropped = messages[self.count:]
        del messages[self.count:]
        _dropped(dropped, 'a savepoint before them was rolled back')


def _open_batch(producer):
    """Enter ``producer.batch()`` so this thread's publishes through it
    wait for their confirms once, at the end; None for producers
    without batches."""
    make = getattr(producer, 'batch', None)
    if make is None or getattr(producer, 'confirm', True) is not True:
        return None     # default producers: their window logs failures
    batch = make()
    batch.__enter__()
    return batch


def _close_batch(producer, batch):
    """Leave ``batch``, logging the messages the broker did not confirm."""
    if batch is None or isinstance(batch, Exception):
        return
    try:
        batch.__exit__(None, None, None)
    except Exception as exc:
        ids = getattr(exc, 'message_ids', None) or [
            _message_id(record.msg) for record in batch.records]
        logger.error(
            'messages %s to exchange %r were not confirmed after their '
            'transaction committed: %s', ', '.join(ids),
            _exchange(producer), exc,
            exc_info=not isinstance(exc, ZAMQPError))


_outboxes = weakref.WeakSet()


def never_committed():
    """At exit: log at WARNING the messages of transactions that were
    neither committed nor aborted (a script that forgot to commit):
    they were not published."""
    for outbox in list(_outboxes):
        if outbox.messages:
            logger.warning(
                '%d message(s) were not published: their transaction was '
                'never committed (call transaction.commit()): %s',
                len(outbox.messages), ', '.join(
                    _message_id(entry[1]) for entry in outbox.messages))


atexit.register(never_committed)


def _dropped(messages, reason):
    if messages:
        logger.debug('dropped %d message(s) because %s: %s', len(messages),
                     reason, ', '.join(_message_id(entry[1])
                                       for entry in messages))


def _message_id(msg):
    return str(getattr(msg, 'properties', {}).get('message_id'))


def _exchange(producer):
    return getattr(getattr(producer, 'props', None), 'exchange', None)
