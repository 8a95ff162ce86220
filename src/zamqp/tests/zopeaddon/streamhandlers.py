"""The stream reader's handler and view of test_stream_instances.

``apply`` appends each message's number to a PersistentList in the ZODB
root (``root['zamqp.tests.stream']``), in the transaction zamqp commits
the reader's position with. It also writes a journal outside the ZODB
(``var/stream-journal.log`` in the instance), one line when it begins a
message and one after the transaction committed, so that a test can tell
whether a process killed with kill -9 died in the middle of one.
"""
import json
import os
import threading
import time

import transaction
from App.config import getConfiguration
from persistent.list import PersistentList
from Products.Five import BrowserView

from zamqp.streams import message_offset
from zamqp.zope import context
from zamqp.zope import lifecycle

#: The key of the applied numbers in the ZODB root mapping.
ROOT_KEY = 'zamqp.tests.stream'
#: The key of the readers' positions (zamqp.zope.offsets.ROOT_KEY).
OFFSETS_KEY = 'zamqp.offsets'

_lock = threading.Lock()


def journal_path():
    home = getattr(getConfiguration(), 'instancehome', '') or '.'
    return os.path.join(home, 'var', 'stream-journal.log')


def journal(*words):
    """Append a line to the journal, flushed at once (kill -9 keeps it)."""
    line = ' '.join(str(word) for word in words) + '\n'
    with _lock:
        fd = os.open(journal_path(),
                     os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)


def apply(event):
    """Consumer handler (IMessageReceived) of a stream reader: append
    ``body['n']`` to ``root['zamqp.tests.stream']``, then sleep
    ``body['delay']`` seconds before returning (the change waits
    uncommitted meanwhile); with ``body['once']`` only the first time
    the instance handles that message, not again after a restart."""
    body = event.body
    number = body['n']
    offset = message_offset(event.message)
    root = context.connection().root()
    applied = root.get(ROOT_KEY)
    if applied is None:
        applied = root[ROOT_KEY] = PersistentList()
    journal('began', number, offset, os.getpid())
    applied.append(number)
    transaction.get().addAfterCommitHook(_committed, (number, offset))
    delay = body.get('delay') or 0
    if delay and body.get('once') and not _first_time(number):
        delay = 0
    if delay:
        time.sleep(delay)


def _first_time(number):
    """Whether this instance handles message ``number`` for the first
    time (a marker file in ``var`` tells, across restarts)."""
    marker = os.path.join(os.path.dirname(journal_path()),
                          f'stream-once-{number}')
    try:
        os.close(os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        return False
    return True


def _committed(status, number, offset):
    journal('committed' if status else 'aborted', number, offset,
            os.getpid())


class State(BrowserView):
    """``@@zamqp-stream-state``: the numbers applied here (committed),
    the readers' positions (committed), the process id and the status
    of the consumers (``zamqp.zope.lifecycle.status()``: counts, the
    reader's position)."""

    def __call__(self):
        root = self.context._p_jar.root()
        positions = root.get(OFFSETS_KEY)
        self.request.response.setHeader('Content-Type', 'application/json')
        return json.dumps(dict(
            applied=list(root.get(ROOT_KEY) or ()),
            positions={f'{stream} {reader}': offset for (stream, reader),
                       offset in (positions or {}).items()},
            pid=os.getpid(), consumers=lifecycle.status()), default=str)
