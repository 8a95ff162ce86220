"""The runner of 1.0b2: one event consumer thread per process."""
from __future__ import annotations

import atexit
import threading
from typing import TYPE_CHECKING
from typing import Any

from zamqp.consumer import AMQPConsumer
from zamqp.consumer import AMQPThread
from zamqp.events import AMQPEventCallback

if TYPE_CHECKING:
    from zamqp.props import AMQPProps

_lock = threading.Lock()
_thread = None
_atexit_registered = False


def create_consumer(props: AMQPProps, queue: str,
                    **consumer_options: Any) -> AMQPThread:
    """Start a thread that notifies every AMQPEvent payload sent to
    ``queue`` on ``props.exchange`` as a local zope event.

    Calling it again stops the previous consumer and starts the new one;
    the consumer is stopped when the interpreter exits. Returns the
    started AMQPThread. ``consumer_options`` go to AMQPConsumer (for
    example ``allow=[MyEvent]``).
    """
    global _thread, _atexit_registered
    consumer = AMQPConsumer(queue, props, AMQPEventCallback(),
                            **consumer_options)
    with _lock:
        close()
        _thread = AMQPThread(consumer)
        if not _atexit_registered:
            atexit.register(close)
            _atexit_registered = True
        _thread.start()
        return _thread


def close() -> None:
    """Stop the consumer started by ``create_consumer``, if any."""
    global _thread
    thread, _thread = _thread, None
    if thread is not None:
        thread.stop()


USAGE = """\
zamqp.runner is the 1.0b2 API (create_consumer, close) for Python code;
it runs nothing by itself. To run consumers from the command line use the
worker: describe them in an INI file and run

    zamqp worker CONFIG          (or: python -m zamqp worker CONFIG)

('zamqp worker --help' and docs/cli.rst describe the file). To print
what an exchange receives: zamqp listen --exchange NAME.
"""

if __name__ == '__main__':
    import sys
    sys.stderr.write(USAGE)
    sys.exit(2)
