"""Neural-network pieces: recurrent layers (``recurrent``) and dropout transforms (``dropouts``).

The public functions are re-exported by ``jaxprune`` itself (``jp.lstm``,
``jp.dropout``, ...). The modules are named so that none shares its name with
a function the package exports.
"""
