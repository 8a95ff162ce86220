"""``python -m zamqp``: the ``zamqp`` command (see zamqp.cli)."""
from zamqp.cli import main

if __name__ == '__main__':
    main()
