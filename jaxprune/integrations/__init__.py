"""Framework integrations: ``jaxprune.integrations.flax`` (NNX and Linen)."""
