"""Neural-network pieces: recurrent layers (``lstm``) and dropout transforms.

The public functions are re-exported by ``jaxprune`` itself (``jp.lstm``,
``jp.dropout``, ...); this package's ``__init__`` re-exports nothing, so the
modules ``jaxprune.nn.lstm`` and ``jaxprune.nn.dropout`` keep their names.
"""
