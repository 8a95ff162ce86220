"""The zamqp configlet of Plone's Site Setup (``@@zamqp-controlpanel``).

The page is zamqp's status view (``zamqp.zope.browser.views.StatusView``,
the report of the ZMI's ``/Control_Panel/zamqp-status``) in Plone's
control panel look (``controlpanel.pt``).
"""
from plone.base.interfaces import INonInstallable
from zope.interface import implementer

from zamqp.zope.browser.views import StatusView


@implementer(INonInstallable)
class HiddenProfiles:
    """Keep the uninstall profile out of the Add-ons control panel."""

    def getNonInstallableProfiles(self):
        return ['zamqp.zope.plone:uninstall']


class ControlPanelView(StatusView):
    """zamqp's status view for the Plone site root."""
