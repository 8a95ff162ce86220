"""InZope: handle a received message in a ZODB transaction on a Zope site.

While a consumer handles a message in Zope, its handler and every
subscriber it notifies reach the database through ``site()`` (the object
of the consumer's ``site`` setting: the application root by default),
``application()`` (the Zope application root) and ``connection()`` (the
ZODB connection: ``connection().root()`` is the database's root
mapping), all in the transaction zamqp commits afterwards. The component
site (``zope.component.hooks.getSite()``) is set only when the
configured site is one (an ISite, such as a Plone site); ``site()`` is
always there.
"""
import logging
import threading

import transaction
from AccessControl.SecurityManagement import newSecurityManager
from AccessControl.SecurityManagement import noSecurityManager
from Acquisition import aq_base
from Acquisition import aq_chain
from Acquisition import aq_inner
from Testing.makerequest import makerequest
from ZODB.POSException import ConflictError
from zExceptions import NotFound
from zope.component.hooks import setSite
from zope.component.interfaces import ISite
from zope.globalrequest import clearRequest
from zope.globalrequest import setRequest

from zamqp.exceptions import ZAMQPError
from zamqp.worker import current_delivery

logger = logging.getLogger(__name__)
_local = threading.local()


def site():
    """The configured site of the message this thread handles.

    The object of ``<zamqp:consumer site="...">`` (the application root
    by default), acquisition-wrapped in a request, in the transaction
    zamqp commits after the handler; None outside the handling of a
    message in Zope. Handlers and ``events="true"`` subscribers may
    change it and what it contains.
    """
    return getattr(_local, 'site', None)


def application():
    """The Zope application root (wrapped in a request) of the message
    this thread handles, in its transaction; None outside."""
    return getattr(_local, 'application', None)


def connection():
    """The ZODB connection of the message this thread handles (its
    ``root()`` is the database's root mapping); None outside."""
    return getattr(_local, 'connection', None)


class ZopeContextError(ZAMQPError, LookupError):
    """The site or the user a consumer is configured with is not found."""


class MessageGivenBack(ZAMQPError):
    """The consumer gave the message back to the queue while its handler
    ran (stop deadline passed, channel lost): the transaction was aborted
    instead of committed, since the message will be handled again."""


class InZope:
    """Run ``deliver(event)`` in a transaction of ``database``, on a site.

    For each call: open a connection, begin a transaction of the
    thread's own transaction manager (the one ``transaction.get()`` uses
    in this thread, unwrapped, so that Zope closing the database from its
    main thread aborts and unregisters where the connection was
    registered), wrap the application root in a request, traverse to
    ``site`` (a path such as ``'/plone'``; default: the application
    root), make it the component site when it is one, log in ``user``
    (found in the ``acl_users`` of the site or above it; default:
    anonymous), set ``event.site`` and the thread's ``site()``,
    ``application()`` and ``connection()``, call ``deliver(event)``,
    then commit. A ConflictError aborts and tries again, ``retries`` times at
    most, then is raised; any other error aborts and is raised. If the
    consumer gave up on the message meanwhile
    (``zamqp.worker.current_delivery().abandoned()``: it goes back to
    the queue), the transaction is aborted instead of committed and
    MessageGivenBack is raised, so the message's effects are not
    committed twice. The site, the security manager, the global request
    and the connection are always released.

    With ``position`` (a zamqp.zope.offsets.TransactionalPosition, for
    stream readers) the reader's position moves to the message's offset
    in the same transaction, and a message whose offset the committed
    position has reached already is not delivered again.
    """

    def __init__(self, database, site='', user=None, retries=3,
                 position=None):
        self.database = database
        self.site = site or ''
        self.user = user
        self.retries = retries
        self.position = position

    def __call__(self, deliver, event):
        """Deliver ``event``; return what ``deliver`` returned."""
        for attempt in range(self.retries + 1):
            try:
                return self.attempt(deliver, event)
            except ConflictError as exc:
                if attempt == self.retries:
                    raise
                logger.info('consumer %s: conflict (%s); trying again '
                            '(%d of %d)', event.consumer, exc, attempt + 1,
                            self.retries)

    def attempt(self, deliver, event):
        """One try: deliver and commit, or abort and raise."""
        given_back(event)
        # the thread's concrete TransactionManager, not the thread-local
        # proxy: DB.close() in MainThread calls the connection's manager
        # (abort, unregisterSynch), which must be this thread's
        manager = transaction.manager.manager
        txn = manager.begin()
        txn.note(f'zamqp consumer {event.consumer}')
        connection = self.database.open(transaction_manager=manager)
        try:
            try:
                if self.position is not None and \
                        not self.position.apply(connection, event.message):
                    manager.abort()
                    return None
                event.site = self.enter(connection)
                result = deliver(event)
                given_back(event)
                manager.commit()
            except BaseException:
                manager.abort()
                raise
            return result
        finally:
            self.leave(connection)

    def enter(self, connection):
        """Set up request, site and user; return the site."""
        app = makerequest(connection.root()['Application'])
        setRequest(app.REQUEST)
        _local.connection, _local.application = connection, app
        site = self.traverse(app)
        if ISite.providedBy(site):
            setSite(site)
        if self.user:
            newSecurityManager(None, find_user(site, self.user))
        else:
            noSecurityManager()
        _local.site = site
        return site

    def traverse(self, app):
        """The object at ``self.site`` (the application for '' or '/')."""
        path = self.site.strip('/')
        if not path:
            return app
        try:
            return app.unrestrictedTraverse(path)
        except (LookupError, AttributeError, NotFound) as exc:
            raise ZopeContextError(
                f'site {self.site!r} not found in the database '
                f'({type(exc).__name__}: {exc}): fix the site attribute '
                'of <zamqp:consumer>') from exc

    def leave(self, connection):
        """Forget user, site and request; close the connection."""
        _local.site = _local.application = _local.connection = None
        noSecurityManager()
        setSite(None)
        clearRequest()
        connection.close()

    def __repr__(self):
        return (f'<InZope site={self.site or "/"!r} '
                f'user={self.user or "Anonymous"!r}>')


def given_back(event):
    """Raise MessageGivenBack if the consumer gave up on the message this
    worker thread handles (nothing to check outside a delivery)."""
    delivery = current_delivery()
    if delivery is not None and delivery.abandoned():
        raise MessageGivenBack(
            f'consumer {event.consumer}: the message was given back to the '
            'queue while its handler ran (stop deadline passed or channel '
            'lost); its transaction is aborted, not committed, and the '
            'message will be handled again')


def find_user(context, userid):
    """The user ``userid`` of the nearest ``acl_users`` that knows it,
    from ``context`` upwards, wrapped in that user folder.

    Raises ZopeContextError when no user folder knows ``userid``.
    """
    for obj in aq_chain(aq_inner(context)):
        if getattr(aq_base(obj), 'acl_users', None) is None:
            continue
        folder = obj.acl_users
        user = folder.getUserById(userid)
        if user is not None:
            return user if hasattr(user, 'aq_base') else user.__of__(folder)
    raise ZopeContextError(
        f'user {userid!r} not found in any acl_users from '
        f"{'/'.join(context.getPhysicalPath()) or '/'} upwards: fix the "
        'user attribute of <zamqp:consumer>')
