"""Shipped recipes (YAML). Installed as the package ``jointreg.recipes`` so that
``jointreg demo`` and ``jointreg study`` find them in any installation."""
