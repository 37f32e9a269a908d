"""Framework integrations.

``jaxprune.integrations.flax``: NNX and Linen. ``jaxprune.integrations.torch``: PyTorch state_dicts in and out.
"""
