"""Pure Flax linen modules: they know nothing of losses, optimizers, devices or data."""
