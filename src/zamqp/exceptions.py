"""The errors zamqp raises."""
import pickle


class ZAMQPError(Exception):
    """Base of every error zamqp raises."""


class ConfigurationError(ZAMQPError, ValueError):
    """A setting is wrong; the message names it and how to fix it."""


class ConnectionFailed(ZAMQPError, ConnectionError):
    """The broker could not be reached, refused the login or the vhost.

    ``recoverable`` tells whether trying again later may succeed (broker
    down, network cut) or whether a setting must change first (wrong
    password, unknown virtual host, exchange of another type).
    """

    def __init__(self, message, recoverable=True):
        super().__init__(message)
        self.recoverable = recoverable


class PublishFailed(ZAMQPError):
    """A message could not be published."""


class MessageRefused(ZAMQPError):
    """A received message was not decoded; the text says why and what
    setting would accept it."""


class UnpicklingRefused(MessageRefused, pickle.UnpicklingError):
    """A pickle named a global that the allow rules do not permit."""
