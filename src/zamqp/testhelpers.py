"""Helpers for tests against a real broker: URL, names, waiting, checks."""
import os
import socket
import threading
import time
import uuid

import amqp
from amqp import exceptions as amqp_errors

from zamqp.props import AMQPProps

#: The one setting tests read: where the broker is.
URL_VARIABLE = 'ZAMQP_TEST_URL'
DEFAULT_URL = 'amqp://guest:guest@127.0.0.1:5672/'


def broker_url():
    """The broker URL tests use: $ZAMQP_TEST_URL or the local default."""
    return os.environ.get(URL_VARIABLE) or DEFAULT_URL


def unique(prefix='zamqp.test'):
    """A name no other test run uses."""
    return f'{prefix}.{uuid.uuid4().hex[:12]}'


def broker_props(**kw):
    """Props for the test broker on an exchange of this run's own."""
    kw.setdefault('exchange', unique())
    return AMQPProps(url=broker_url(), **kw)


def free_port():
    """A loopback TCP port nothing listens on (right now)."""
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def wait_for(predicate, timeout=5.0, interval=0.02):
    """Poll ``predicate`` until it is true or ``timeout`` passed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


class Admin:
    """A raw py-amqp connection to inspect and clean up the broker."""

    def __init__(self, url=None):
        props = AMQPProps(url=url or broker_url())
        self.connection = amqp.Connection(
            props.address, userid=props.user, password=props.password,
            virtual_host=props.virtual_host, connect_timeout=5)
        self.connection.connect()
        self.channel = self.connection.channel()

    def queue_exists(self, name):
        try:
            self.channel.queue_declare(name, passive=True)
        except amqp_errors.NotFound:
            self.channel = self.connection.channel()
            return False
        except amqp_errors.ResourceLocked:
            # an exclusive queue of another connection: it exists
            self.channel = self.connection.channel()
            return True
        return True

    def queue_depth(self, name):
        return self.channel.queue_declare(name, passive=True).message_count

    def take(self, queue):
        """Take (get and acknowledge) every message waiting in ``queue``."""
        taken = []
        while (message := self.channel.basic_get(queue, no_ack=True)) \
                is not None:
            taken.append(message)
        return taken

    def delete_exchange(self, name):
        self.channel.exchange_delete(name)

    def delete_queue(self, name):
        self.channel.queue_delete(name)

    def close(self):
        self.connection.close()


def zamqp_threads():
    """The consumer threads that are still alive."""
    return [t for t in threading.enumerate()
            if t.name.startswith('zamqp-') and t.is_alive()]
