"""zamqp in Zope and Plone: ZCML directives, settings from zope.conf,
consumers started with the database, handlers run in Zope's context,
test layers.

Needs ``pip install zamqp[zope]``; the plain core (``zamqp``) never
imports this package.
"""
