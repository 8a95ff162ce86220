"""zamqp's pages for operators: the status page and the health view.

``report`` gathers what zamqp runs in this process (no Zope needed);
``views`` (Products.Five) renders it. See docs/status.rst.
"""
