"""Offset stores: where stream readers keep their positions."""
from __future__ import annotations

import json
import os
import tempfile
import threading
import urllib.parse
from typing import TYPE_CHECKING

from zope.interface import implementer

from zamqp.exceptions import ConfigurationError
from zamqp.exceptions import OffsetStoreError
from zamqp.interfaces import IOffsetStore

if TYPE_CHECKING:
    from typing import Union

    PathLike = Union[str, 'os.PathLike[str]']

try:
    import fcntl
except ImportError:     # pragma: no cover - not on POSIX
    fcntl = None

#: Lock files this process holds: path -> file descriptor (flock locks
#: are per open file, so the process itself must know its own).
_held = {}
_held_lock = threading.Lock()


@implementer(IOffsetStore)
class FileOffsetStore:
    """Positions in files of one directory: ``<stream>@<reader>.offset``
    (names percent-encoded), each holding one line of JSON,
    ``{"stream": ..., "reader": ..., "offset": N}``.

    A position is written to a temporary file in the same directory,
    flushed and fsync'ed, then renamed over the old one and the
    directory fsync'ed: after a crash the file holds the old position
    or the new one, never a mixture. ``lock(stream, reader)`` takes an
    exclusive lock on ``<stream>@<reader>.lock`` so that two processes
    cannot run the same reader on the same directory (the reader holds
    it while it runs). The directory is made (mode 0700) if missing.
    """

    suffix = '.offset'

    def __init__(self, directory: PathLike) -> None:
        try:
            self.directory = os.fspath(directory)
        except TypeError:
            raise ConfigurationError(
                f'offsets={directory!r} is not a directory path or an '
                'IOffsetStore: give a directory (str or pathlib.Path) '
                'where the reader may keep its position') from None
        if not self.directory:
            raise ConfigurationError(
                "offsets='' names no directory: give a directory where "
                'the reader may keep its position')
        if os.path.exists(self.directory) and \
                not os.path.isdir(self.directory):
            raise ConfigurationError(
                f'offsets={self.directory!r} is a file, not a directory: '
                'give a directory where the reader may keep its position')

    def path(self, stream: str, reader: str, suffix: str | None = None
             ) -> str:
        quote = urllib.parse.quote
        name = f"{quote(stream, safe='')}@{quote(reader, safe='')}"
        return os.path.join(self.directory, name + (suffix or self.suffix))

    def load(self, stream: str, reader: str) -> int | None:
        path = self.path(stream, reader)
        try:
            with open(path, encoding='utf-8') as file:
                text = file.read()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise OffsetStoreError(
                f'cannot read the position of reader {reader!r} of stream '
                f'{stream!r} from {path} ({type(exc).__name__}: {exc}): '
                'fix its permissions') from exc
        try:
            data = json.loads(text)
            offset = data['offset']
            names = (data['stream'], data['reader'])
        except (ValueError, TypeError, KeyError):
            offset, names = None, None
        if names != (stream, reader) or isinstance(offset, bool) or \
                not isinstance(offset, int) or offset < 0:
            raise OffsetStoreError(
                f'{path} does not hold a position of reader {reader!r} of '
                f'stream {stream!r} (it reads {text[:80]!r}); zamqp writes '
                'these files atomically, so something else changed it: '
                'restore it, or delete it to begin at the reader\'s start')
        return offset

    def save(self, stream: str, reader: str, offset: int) -> None:
        current = self.load(stream, reader)
        if current is not None and current >= offset:
            return
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        text = json.dumps({'stream': stream, 'reader': reader,
                           'offset': offset}) + '\n'
        path = self.path(stream, reader)
        fd, temporary = tempfile.mkstemp(
            prefix='.' + os.path.basename(path), suffix='.tmp',
            dir=self.directory)
        try:
            with os.fdopen(fd, 'w', encoding='utf-8') as file:
                file.write(text)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)
        except BaseException:
            try:
                os.unlink(temporary)
            except OSError:
                pass
            raise
        _fsync_directory(self.directory)

    def lock(self, stream: str, reader: str) -> None:
        """Take the lock of ``reader`` of ``stream`` (held until
        ``unlock``); OffsetStoreError if another process holds it."""
        if fcntl is None:       # pragma: no cover
            return
        path = os.path.abspath(self.path(stream, reader, '.lock'))
        with _held_lock:
            if path in _held:
                raise OffsetStoreError(
                    f'reader {reader!r} of stream {stream!r} already runs '
                    f'in this process (positions in {self.directory}): '
                    'give each reader its own name')
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise OffsetStoreError(
                    f'reader {reader!r} of stream {stream!r} already runs '
                    f'in another process (it holds {path}): give each '
                    'process its own reader name, or stop the other '
                    'one') from None
            os.ftruncate(fd, 0)
            os.write(fd, f'{os.getpid()}\n'.encode())
            _held[path] = fd

    def unlock(self, stream: str, reader: str) -> None:
        path = os.path.abspath(self.path(stream, reader, '.lock'))
        with _held_lock:
            fd = _held.pop(path, None)
        if fd is not None:
            os.close(fd)    # releases the lock

    def __repr__(self):
        return f'<FileOffsetStore {self.directory!r}>'


def _fsync_directory(directory):
    """Make a rename in ``directory`` durable (where the OS can)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:         # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:         # pragma: no cover
        pass
    finally:
        os.close(fd)


def offset_store(offsets: object) -> IOffsetStore:
    """The IOffsetStore ``offsets`` names: itself if it provides one
    (or has ``load`` and ``save``), else a FileOffsetStore of that
    directory."""
    if IOffsetStore.providedBy(offsets) or (
            callable(getattr(offsets, 'load', None))
            and callable(getattr(offsets, 'save', None))):
        return offsets
    if offsets is None:
        raise ConfigurationError(
            'a stream reader needs offsets=: a directory where it keeps '
            'its position (or an IOffsetStore), so that it goes on where '
            'it stopped after a restart')
    return FileOffsetStore(offsets)
