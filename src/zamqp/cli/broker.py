"""``zamqp check``, ``zamqp status`` and ``zamqp topology``."""
