"""The status view classes rendered without a browser or a Zope
instance: for a context that is neither the Control Panel nor the
application root, and with a template given as ``<browser:page
template=...>`` gives one (what a Plone control panel does)."""
import os

import pytest
import zope.component
from plone.testing import zca
from zope.interface import Interface
from zope.traversing.adapters import DefaultTraversable
from zope.traversing.interfaces import ITraversable

TEMPLATE = os.path.join(os.path.dirname(__file__), 'status_template.pt')


@pytest.fixture
def folder():
    """A Zope folder with a request, in a registry that can traverse
    (what page templates need)."""
    from OFS.Folder import Folder
    from Testing.makerequest import makerequest
    zca.pushGlobalRegistry()
    zope.component.provideAdapter(DefaultTraversable, (Interface,),
                                  ITraversable)
    yield makerequest(Folder('site'))
    zca.popGlobalRegistry()


def test_table_renders_for_any_context(folder):
    from zamqp.zope.browser.views import StatusView
    html = StatusView(folder, folder.REQUEST).table()
    assert 'id="zamqp-health"' in html
    assert '<h3>Consumers</h3>' in html and 'No consumers.' in html
    assert 'data-healthy="true"' in html


def test_a_template_of_its_own_keeps_the_table(folder):
    from Products.Five.browser.metaconfigure import SimpleViewClass
    from zamqp.zope.browser.views import StatusView
    # what <browser:page class=... template=...> makes of the class
    Page = SimpleViewClass(TEMPLATE, bases=(StatusView,), name='status')
    page = Page(folder, folder.REQUEST)()
    assert page.startswith('<div class="elsewhere"><h1>zamqp</h1>')
    assert 'id="zamqp-consumers"' not in page    # no consumers here
    assert 'No consumers.' in page and 'No producers.' in page
    assert 'no-store' in folder.REQUEST.response.getHeader('Cache-Control')


def test_health_view(folder):
    from zamqp.zope.browser.views import HealthView
    body = HealthView(folder, folder.REQUEST)()
    response = folder.REQUEST.response
    assert (response.getStatus(), body) == (
        200, 'OK\nno consumers configured\n')
    assert response.getHeader('Content-Type').startswith('text/plain')
