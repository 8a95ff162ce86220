"""The status page and the health view (see docs/status.rst).

``StatusView`` renders a StatusReport (``zamqp.zope.browser.report``).
Registered here for Zope's Control Panel (``/Control_Panel/zamqp-status``,
ZMI look) with the permission ``View management screens``; it works for
any context, so a Plone control panel can register the same class with
a template of its own for the site root::

    <browser:page
        for="Products.CMFPlone.interfaces.IPloneSiteRoot"
        name="zamqp-controlpanel"
        class="zamqp.zope.browser.views.StatusView"
        template="controlpanel.pt"
        permission="cmf.ManagePortal" />

Such a template puts the report where it wants it with
``<div tal:replace="structure view/table" />`` (the tables of consumers
and producers, ``report.pt``: no ZMI header, no ``<html>``) and may read
``view/report`` (the StatusReport) itself.

``HealthView`` is the public check for load balancers: 200 when every
configured consumer consumes, else 503; a short text/plain body of names
and states only.

``MetricsView`` (``@@zamqp-metrics``) serves ``zamqp.metrics`` in the
Prometheus text format, producers and consumers named as on the status
page; like the status page it needs ``View management screens``.
"""
import datetime
import time

from Products.Five import BrowserView
from Products.Five.browser.pagetemplatefile import ViewPageTemplateFile

from zamqp import metrics as _metrics
from zamqp.zope.browser import report as _report

#: The Control Panel tab of the status page (see add_control_panel_tab).
TAB = {'label': 'AMQP', 'action': 'zamqp-status'}

_STATE_CLASSES = {'consuming': 'success', 'connected': 'success',
                  'idle': 'secondary', 'starting': 'info',
                  'reconnecting': 'warning', 'disconnected': 'warning',
                  'down': 'warning', 'failed': 'danger',
                  'stopped': 'secondary', 'closing': 'secondary',
                  'disabled': 'secondary',
                  _report.NOT_STARTED: 'secondary'}


def _no_cache(response):
    response.setHeader('Cache-Control', 'no-store, max-age=0')


class StatusView(BrowserView):
    """The status page of zamqp in this process.

    ``index`` is the page (by default the ZMI page ``zmi_status.pt``; a
    ``template`` given in ZCML replaces it), ``table`` the report alone,
    for any template. ``report`` is gathered once per request. Shows no
    password and no secret (see ``zamqp.zope.browser.report``).
    """

    index = ViewPageTemplateFile('zmi_status.pt')
    table = ViewPageTemplateFile('report.pt')
    backlog_meaning = _report.BACKLOG_MEANING
    _gathered = None

    def __call__(self):
        _no_cache(self.request.response)
        return self.index()

    @property
    def report(self):
        if self._gathered is None:
            self._gathered = _report.gather()
        return self._gathered

    def state_class(self, state):
        """The Bootstrap badge class of a state (ZMI and Plone 6 use
        Bootstrap)."""
        return 'badge badge-pill bg-{0} badge-{0}'.format(
            _STATE_CLASSES.get(state, 'secondary'))

    def when(self, timestamp):
        """``2026-12-01 13:44:00 UTC (12 s ago)``; '' for None."""
        if timestamp is None:
            return ''
        moment = datetime.datetime.fromtimestamp(
            timestamp, datetime.timezone.utc)
        return (f'{moment:%Y-%m-%d %H:%M:%S} UTC '
                f'({_ago(time.time() - timestamp)})')


def _ago(seconds):
    seconds = max(int(seconds), 0)
    if seconds < 120:
        return f'{seconds} s ago'
    if seconds < 7200:
        return f'{seconds // 60} min ago'
    if seconds < 172800:
        return f'{seconds // 3600} h ago'
    return f'{seconds // 86400} days ago'


class HealthView(BrowserView):
    """``@@zamqp-health``: 200 and ``OK`` when every configured consumer
    consumes (or consumers are kept off, or none is configured), else
    503 and ``UNHEALTHY``; then one ``name: state`` line per configured
    consumer. text/plain, never cached, nothing but names and states."""

    def __call__(self):
        report = _report.gather()
        response = self.request.response
        response.setStatus(200 if report.healthy else 503)
        response.setHeader('Content-Type', 'text/plain; charset=utf-8')
        _no_cache(response)
        return report.health_text()


class MetricsView(BrowserView):
    """``@@zamqp-metrics``: the counters, backlogs and states of every
    producer and consumer of the process in the Prometheus text
    exposition format (``zamqp.metrics.render``), named as on the status
    page. Never cached; no password or secret."""

    def __call__(self):
        response = self.request.response
        response.setHeader('Content-Type', _metrics.CONTENT_TYPE)
        _no_cache(response)
        return _metrics.render(
            _metrics.collect(names=_report.client_names()))


def add_control_panel_tab(manager_class=None):
    """Add the ``AMQP`` tab (TAB) to the tabs of Zope's Control Panel,
    once; it links to ``/Control_Panel/zamqp-status`` and, like every
    tab, is shown only to users who may open that page. Called when this
    module is imported (the ZCML of this package imports it)."""
    if manager_class is None:
        from App.ApplicationManager import ApplicationManager
        manager_class = ApplicationManager
    options = tuple(manager_class.manage_options)
    if TAB not in options:
        manager_class.manage_options = options + (dict(TAB),)


add_control_panel_tab()
