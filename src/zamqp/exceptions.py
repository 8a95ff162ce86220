"""The errors zamqp raises."""
from __future__ import annotations

import pickle
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Iterable


class ZAMQPError(Exception):
    """Base of every error zamqp raises."""


class ConfigurationError(ZAMQPError, ValueError):
    """A setting is wrong; the message names it and how to fix it."""


class OffsetStoreError(ZAMQPError):
    """A stream reader's saved position cannot be read or written (a
    damaged file, a reader of that name already running); the message
    names the file or the reader and what to do."""

    recoverable = False


class ConnectionFailed(ZAMQPError, ConnectionError):
    """The broker could not be reached, refused the login or the vhost.

    ``recoverable`` tells whether trying again later may succeed (broker
    down, network cut) or whether a setting must change first (wrong
    password, unknown virtual host, exchange of another type).
    """

    def __init__(self, message: str, recoverable: bool = True) -> None:
        super().__init__(message)
        self.recoverable = recoverable


class PublishFailed(ZAMQPError):
    """A message could not be published."""


class PublishBlocked(PublishFailed):
    """The broker blocks publishers (RabbitMQ's ``connection.blocked``,
    sent during a memory or disk alarm) and did not unblock within the
    producer's ``confirm_timeout``; the message was not sent.

    ``reason``: the broker's reason, e.g. ``'low on memory'`` or ``'low
    on disk'``.
    """

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason


class NotConfirmed(PublishFailed):
    """The broker did not confirm one or more published messages.

    ``nacked``: ids of messages the broker refused (basic.nack);
    ``returned``: (id, routing key, reply text) of unroutable messages
    returned because of ``mandatory=True`` (basic.return);
    ``unconfirmed``: ids of messages with no answer within
    ``confirm_timeout``, or lost with their connection. Messages not
    listed were confirmed.
    """

    def __init__(self, message: str, nacked: Iterable[str] = (),
                 returned: Iterable[tuple[str, str, str]] = (),
                 unconfirmed: Iterable[str] = ()) -> None:
        super().__init__(message)
        self.nacked = list(nacked)
        self.returned = list(returned)
        self.unconfirmed = list(unconfirmed)

    @property
    def message_ids(self) -> list[str]:
        """The ids of all messages that were not confirmed."""
        return (self.nacked + [entry[0] for entry in self.returned]
                + self.unconfirmed)


class MessageRefused(ZAMQPError):
    """A received message was not decoded; the text says why and what
    setting would accept it."""


class UnpicklingRefused(MessageRefused, pickle.UnpicklingError):
    """A pickle named a global that the allow rules do not permit."""
