"""Browser views of the test add-on: notify, and report what was seen."""
import json
import os
import threading

import zope.event
from App.config import getConfiguration
from Products.Five import BrowserView

from zamqp.consumer import AMQPThread
from zamqp.tests.zopeaddon import handlers
from zamqp.tests.zopeaddon.events import Noted


class JSONView(BrowserView):

    def __call__(self):
        self.request.response.setHeader('Content-Type', 'application/json')
        return json.dumps(self.data())


class Notify(JSONView):
    """``@@zamqp-notify?text=...``: notify a Noted event here."""

    def data(self):
        event = Noted(self.request.form.get('text', ''), origin=_name())
        zope.event.notify(event)
        return dict(notified=event.text, origin=event.origin)


class Seen(JSONView):
    """``@@zamqp-seen``: the INoted events this process notified."""

    def data(self):
        return list(handlers.SEEN)


class Stored(JSONView):
    """``@@zamqp-stored``: what the ``store`` handler committed here."""

    def data(self):
        return handlers.stored(self.context)


class Slow(JSONView):
    """``@@zamqp-slow``: what the ``slow_store`` handler committed here."""

    def data(self):
        return handlers.stored(self.context, 'zamqp_slow')


class Consumers(JSONView):
    """``@@zamqp-consumers``: the running consumer threads and queues."""

    def data(self):
        return {t.name: t.consumer.queue_name for t in threading.enumerate()
                if isinstance(t, AMQPThread) and t.is_alive()}


def _name():
    """The instance's name: the base name of its INSTANCE_HOME."""
    home = getattr(getConfiguration(), 'instancehome', '') or ''
    return os.path.basename(home.rstrip('/')) or 'zope'
