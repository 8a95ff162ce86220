"""Sphinx configuration of zamqp's documentation."""
project = 'zamqp'
author = 'zamqp developers'
extensions = ['sphinx.ext.autodoc', 'sphinx.ext.doctest']
master_doc = 'index'
exclude_patterns = ['_build']
html_theme = 'alabaster'
autodoc_member_order = 'bysource'
