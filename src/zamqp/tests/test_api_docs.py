"""docs/api.rst names only what exists (Sphinx is not run by the tests;
a member that was renamed or moved would silently vanish from the
built docs)."""
import importlib
import os
import re

DOCS = os.path.join(os.path.dirname(__file__), '..', '..', '..', 'docs')
DIRECTIVE = re.compile(r'\.\. automodule:: (\S+)\n(?:   :members: '
                       r'([^\n]+(?:\n {13}[^\n]+)*))?')


def test_every_documented_module_and_member_exists():
    with open(os.path.join(DOCS, 'api.rst')) as f:
        text = f.read()
    found = DIRECTIVE.findall(text)
    assert len(found) > 20
    missing = []
    for module_name, members in found:
        module = importlib.import_module(module_name)
        for name in re.split(r'[,\s]+', members.strip()):
            if name and not hasattr(module, name):
                missing.append(f'{module_name}.{name}')
    assert missing == []
