"""zamqp in Plone sites: a control panel and test layers.

Importing this package needs no Plone; its ZCML (``configure.zcml``,
included by ``zamqp.zope`` only where Products.CMFPlone is installed)
and ``zamqp.zope.plone.testing`` do.
"""
