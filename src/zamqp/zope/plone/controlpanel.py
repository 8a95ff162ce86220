"""The zamqp configlet of Plone's Site Setup (``@@zamqp-controlpanel``).

The page is zamqp's status view (``zamqp.zope.browser.views.StatusView``,
the same report as the ZMI's ``/Control_Panel/zamqp-status``) in Plone's
control panel look (``controlpanel.pt``). Where that status view is not
installed, a short table of the consumers the lifecycle started is shown
instead.
"""
from plone.base.interfaces import INonInstallable
from zope.interface import implementer

from zamqp.zope import lifecycle

try:
    from zamqp.zope.browser.views import StatusView
except ImportError:         # the status page is not there: the fallback
    StatusView = None


@implementer(INonInstallable)
class HiddenProfiles:
    """Keep the uninstall profile out of the Add-ons control panel."""

    def getNonInstallableProfiles(self):
        return ['zamqp.zope.plone:uninstall']


if StatusView is not None:

    class ControlPanelView(StatusView):
        """zamqp's status view for the Plone site root."""

        has_report = True

else:
    from Products.Five import BrowserView

    class ControlPanelView(BrowserView):
        """The consumers' states, for lack of zamqp's status view."""

        has_report = False

        def __call__(self):
            self.request.response.setHeader('Cache-Control',
                                            'no-store, max-age=0')
            return self.index()

        def consumers(self):
            return [dict(name=name, state=status.get('state'),
                         alive=status.get('alive'),
                         restarts=status.get('restarts'))
                    for name, status in lifecycle.status().items()]
