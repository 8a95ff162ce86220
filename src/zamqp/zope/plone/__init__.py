"""zamqp in Plone sites: a control panel and test layers.

Importing this package needs no Plone; its ZCML (``configure.zcml``,
included by ``zamqp.zope``'s once Plone 6's ZCML is loaded: the feature
``plone-60``) and ``zamqp.zope.plone.testing`` do.
"""
