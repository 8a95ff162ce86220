"""Browser views of the test add-on: notify, and report what was seen."""
import json
import os
import threading

import zope.event
from App.config import getConfiguration
from OFS.Folder import Folder
from OFS.interfaces import IItem
from Products.Five import BrowserView
from zope.lifecycleevent import Attributes
from zope.lifecycleevent import ObjectModifiedEvent

from zamqp.consumer import AMQPThread
from zamqp.tests.zopeaddon import handlers
from zamqp.tests.zopeaddon.events import Noted
from zamqp.tests.zopeaddon.events import Touched


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


class ContentAdd(JSONView):
    """``@@zamqp-content-add?id=...&title=...``: add a Folder of that id
    and title here (OFS notifies its added event), committed with the
    request; the root records this instance's name."""

    def data(self):
        form = self.request.form
        app = self.context.getPhysicalRoot()
        if getattr(app, 'zamqp_instance', None) != _name():
            app.zamqp_instance = _name()
        folder = Folder(form['id'])
        folder.title = form.get('title', '')
        self.context._setObject(form['id'], folder)
        return dict(added='/'.join(self.context[form['id']]
                                   .getPhysicalPath()))


class ContentEdit(JSONView):
    """``@@zamqp-content-edit?title=...``: set the title of this object
    and notify ObjectModifiedEvent (with an Attributes description);
    with ``touch`` a Touched event (the add-on's own) instead."""

    def data(self):
        form = self.request.form
        if 'touch' in form:
            zope.event.notify(Touched(self.context, how=form['touch']))
            return dict(touched='/'.join(self.context.getPhysicalPath()))
        self.context.title = form['title']
        zope.event.notify(ObjectModifiedEvent(
            self.context, Attributes(IItem, 'title')))
        return dict(modified='/'.join(self.context.getPhysicalPath()),
                    title=self.context.title)


class ContentSeen(JSONView):
    """``@@zamqp-content-seen``: the object events this process
    notified (``handlers.content_seen``)."""

    def data(self):
        return list(handlers.CONTENT_SEEN)


class ContentLog(JSONView):
    """``@@zamqp-content-log``: what ``content_seen`` committed here for
    received object events."""

    def data(self):
        return handlers.stored(self.context, 'zamqp_content')


class NotedLog(JSONView):
    """``@@zamqp-noted``: what ``noted_in_site`` committed here."""

    def data(self):
        return handlers.stored(self.context, 'zamqp_noted')


class Unpicklable(JSONView):
    """``@@zamqp-unpicklable``: notify a Noted event that cannot be
    pickled (its text is a lock)."""

    def data(self):
        zope.event.notify(Noted(threading.Lock(), origin=_name()))
        return dict(notified='a lock')
