"""Subscribers and consumer handlers of the test add-on."""
import logging
import signal
import threading
import time

import transaction
from AccessControl.SecurityManagement import getSecurityManager
from Acquisition import aq_base
from persistent.list import PersistentList
from zope.component.hooks import getSite

from zamqp.zope import context
from zamqp.zope import lifecycle
from zamqp.zope.delivery import is_received
from zamqp.zope.references import IUnresolvedObjectEvent
from zamqp.zope.references import physical_path
from zamqp.worker import current_delivery

#: INoted events notified in this process, oldest first (see ``seen``).
SEEN = []
_lock = threading.Lock()


def seen(event):
    """INoted subscriber: record the event, and whether it came by AMQP."""
    with _lock:
        SEEN.append(dict(text=event.text, origin=event.origin,
                         received=is_received(),
                         thread=threading.current_thread().name))


def store(event):
    """Consumer handler (IMessageReceived): append what was received to
    the ``zamqp_stored`` list of ``event.site``, in its transaction."""
    site = event.site
    if getattr(aq_base(site), 'zamqp_stored', None) is None:
        site.zamqp_stored = PersistentList()
    site.zamqp_stored.append(dict(
        text=getattr(event.body, 'text', repr(event.body)),
        consumer=event.consumer,
        user=getSecurityManager().getUser().getId(),
        site='/'.join(site.getPhysicalPath()) or '/',
        component_site=_path(getSite())))


def stored(site, attribute='zamqp_stored'):
    """What ``store`` (or ``slow_store``: ``attribute='zamqp_slow'``)
    appended to ``site`` (committed or not), as a list."""
    return list(getattr(aq_base(site), attribute, None) or ())


def slow_store(event):
    """Consumer handler of ``addon.slow``: append ``body['text']`` to the
    ``zamqp_slow`` list of ``event.site``, and take ``body['seconds']``
    seconds (none for a redelivered message) before returning: after
    the write, so it waits uncommitted meanwhile, or before it with
    ``body['write_first']`` false (the connection has joined no
    transaction yet then). With ``body['until_given_back']`` it returns
    as soon as the consumer gave the message back (its stop deadline
    passed), so zamqp.zope.context must abort instead of committing."""
    body = event.body
    redelivered = bool(event.message.delivery_info.get('redelivered'))
    logger = logging.getLogger('zamqp.tests.zopeaddon')
    logger.info('slow handler began %s (redelivered: %s)', body['text'],
                redelivered)
    if body.get('write_first', True):
        _append_slow(event.site, body['text'], redelivered)
    if redelivered:
        pass
    elif body.get('until_given_back'):
        delivery = current_delivery()
        deadline = time.monotonic() + body['seconds']
        while not delivery.abandoned() and time.monotonic() < deadline:
            time.sleep(0.02)
        logger.info('slow handler sees %s given back', body['text'])
    else:
        time.sleep(body['seconds'])
    if not body.get('write_first', True):
        _append_slow(event.site, body['text'], redelivered)
    logger.info('slow handler returns %s', body['text'])


def _append_slow(site, text, redelivered):
    if getattr(aq_base(site), 'zamqp_slow', None) is None:
        site.zamqp_slow = PersistentList()
    site.zamqp_slow.append(dict(text=text, redelivered=redelivered))


def _path(obj):
    if obj is None:
        return None
    return '/'.join(obj.getPhysicalPath()) or '/'


def install_sigterm_handler(event):
    """IDatabaseOpenedWithRoot subscriber (``sigterm.zcml``): install a
    SIGTERM handler before zamqp does, to show that zamqp chains to it."""
    signal.signal(signal.SIGTERM, _on_sigterm)


def _on_sigterm(signum, frame):
    logging.getLogger('zamqp.tests.zopeaddon').info(
        "the add-on's own SIGTERM handler runs; consumers running: %s",
        ', '.join(lifecycle.running()) or 'none')
    raise SystemExit(0)


#: Object events notified in this process, oldest first (``content_seen``).
CONTENT_SEEN = []


def content_seen(event):
    """IObjectEvent subscriber: record each object event; a received one
    is also appended to the ``zamqp_content`` list of the consumer's
    site (``zamqp.zope.context.site()``), committed with the message."""
    obj = event.object
    reference = getattr(event, 'zamqp_reference', None)
    entry = dict(
        event=type(event).__name__, received=is_received(),
        path=_joined(physical_path(obj)),
        title=getattr(aq_base(obj), 'title', None) if obj is not None
        else None,
        database=_database_name(obj),
        unresolved=IUnresolvedObjectEvent.providedBy(event),
        sender_path=(None if reference is None or reference.object is None
                     else '/'.join(reference.object.absolute or ()) or '/'),
        descriptions=[list(getattr(d, 'attributes', ()))
                      for d in getattr(event, 'descriptions', ())],
        thread=threading.current_thread().name)
    with _lock:
        CONTENT_SEEN.append(entry)
    site = context.site()
    if is_received() and site is not None:
        if getattr(aq_base(site), 'zamqp_content', None) is None:
            site.zamqp_content = PersistentList()
        site.zamqp_content.append(entry)


def noted_in_site(event):
    """INoted subscriber: a received event's text is appended to the
    ``zamqp_noted`` list of ``zamqp.zope.context.site()`` (the
    application root by default, which is no component site)."""
    site = context.site()
    if not is_received() or site is None:
        return
    if getattr(aq_base(site), 'zamqp_noted', None) is None:
        site.zamqp_noted = PersistentList()
    site.zamqp_noted.append(dict(
        text=event.text, origin=event.origin, site=_path(site),
        application=_path(context.application()),
        component_site=_path(getSite()),
        root_keys=sorted(context.connection().root().keys())))


def _joined(path):
    return None if path is None else '/'.join(path) or '/'


def _database_name(obj):
    """The name of the instance whose database ``obj`` is in (from the
    ``zamqp_instance`` attribute the views put on the root), or None."""
    jar = getattr(aq_base(obj), '_p_jar', None) if obj is not None else None
    if jar is None:
        return None
    app = jar.root().get('Application')
    return getattr(app, 'zamqp_instance', None)


#: The lists ``prepare_root`` makes on the application root.
ROOT_LISTS = ('zamqp_stored', 'zamqp_noted', 'zamqp_content')


def prepare_root(event):
    """IDatabaseOpenedWithRoot subscriber: make the lists the handlers
    and subscribers append to, so that consumers running at the same
    time change only their own list, never the root itself (no conflict
    errors between them, hence no retries that would notify an event
    twice)."""
    connection = event.database.open()
    try:
        app = connection.root()['Application']
        for name in ROOT_LISTS:
            if getattr(aq_base(app), name, None) is None:
                setattr(app, name, PersistentList())
        transaction.commit()
    finally:
        transaction.abort()
        connection.close()
