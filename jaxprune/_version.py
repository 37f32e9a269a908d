"""The package's version, in one place.

pyproject.toml reads it (``[tool.setuptools.dynamic]``) without importing jaxprune, so building needs no jax.
"""

VERSION = "0.1.0"
