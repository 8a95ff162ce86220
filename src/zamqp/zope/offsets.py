"""Stream reader positions in the ZODB, committed with the handler's
changes: each message's effects are committed once (exactly once)."""
import logging

import transaction
from BTrees.OOBTree import OOBTree
from ZODB.POSException import ConflictError
from zope.interface import implementer

from zamqp.interfaces import IOffsetStore

logger = logging.getLogger(__name__)

#: The key of the positions in the database's root mapping.
ROOT_KEY = 'zamqp.offsets'
#: Tries of a save that meets a conflict.
SAVE_TRIES = 5


@implementer(IOffsetStore)
class ZODBOffsetStore:
    """Positions of stream readers in ``database``: an OOBTree at
    ``root['zamqp.offsets']``, ``(stream, reader) -> offset``.

    ``record(connection, stream, reader, offset)`` runs inside the
    transaction that handles the message (zamqp.zope.context.InZope): it
    returns False when the position is at ``offset`` or past it (the
    message was applied already: the handler is not called), else moves
    the position to ``offset`` in that transaction, so the position and
    the handler's changes are committed together or not at all; a
    ConflictError retry runs it again and finds the position as it was.
    ``load`` and ``save`` use transactions of their own (``save`` moves
    the position past messages the reader dead-lettered; it writes
    nothing when the handlers' commits moved it that far already).
    """

    def __init__(self, database):
        self.database = database

    def _open(self):
        manager = transaction.TransactionManager()
        return manager, self.database.open(transaction_manager=manager)

    def load(self, stream, reader):
        manager, connection = self._open()
        try:
            positions = connection.root().get(ROOT_KEY)
            return None if positions is None else \
                positions.get((stream, reader))
        finally:
            manager.abort()
            connection.close()

    def save(self, stream, reader, offset):
        for attempt in range(SAVE_TRIES):
            manager, connection = self._open()
            try:
                manager.begin()
                if self.record(connection, stream, reader, offset):
                    manager.get().note(f'zamqp: position {offset} of '
                                       f'reader {reader} of {stream}')
                    manager.commit()
                return
            except ConflictError:
                manager.abort()
                if attempt == SAVE_TRIES - 1:
                    raise
            finally:
                manager.abort()
                connection.close()

    @staticmethod
    def record(connection, stream, reader, offset):
        """Move the position in ``connection``'s transaction; False if
        it is at ``offset`` or past it already."""
        root = connection.root()
        positions = root.get(ROOT_KEY)
        if positions is None:
            positions = root[ROOT_KEY] = OOBTree()
        current = positions.get((stream, reader))
        if current is not None and current >= offset:
            return False
        positions[(stream, reader)] = offset
        return True

    def __repr__(self):
        return f'<ZODBOffsetStore {self.database!r}>'


class TransactionalPosition:
    """What InZope does for a stream reader in each transaction: the
    position of ``reader`` of ``stream`` in ``store``, moved to each
    message's offset in the transaction that applies it."""

    def __init__(self, store, stream, reader):
        self.store = store
        self.stream = stream
        self.reader = reader

    def apply(self, connection, message):
        """Whether ``message`` is to be applied in this transaction (its
        position then moves with it)."""
        from zamqp.streams import message_offset
        offset = message_offset(message)
        if self.store.record(connection, self.stream, self.reader, offset):
            return True
        logger.info('reader %r of stream %r: message at offset %d was '
                    'applied already (committed before); not again',
                    self.reader, self.stream, offset)
        return False
