"""Broadcast messages and trigger zope events between Python processes."""
from zamqp.connection import AMQPConnection
from zamqp.consumer import AMQPConsumer
from zamqp.consumer import AMQPThread
from zamqp.events import AMQPEvent
from zamqp.events import AMQPEventCallback
from zamqp.exceptions import ConfigurationError
from zamqp.exceptions import ConnectionFailed
from zamqp.exceptions import MessageRefused
from zamqp.exceptions import NotConfirmed
from zamqp.exceptions import PublishBlocked
from zamqp.exceptions import PublishFailed
from zamqp.exceptions import ZAMQPError
from zamqp.producer import AMQPProducer
from zamqp.props import AMQPProps

__all__ = [
    'AMQPProps', 'AMQPConnection', 'AMQPProducer', 'AMQPConsumer',
    'AMQPThread', 'AMQPEventCallback', 'AMQPEvent', 'ZAMQPError',
    'ConfigurationError', 'ConnectionFailed', 'PublishFailed',
    'MessageRefused', 'NotConfirmed', 'PublishBlocked',
]
