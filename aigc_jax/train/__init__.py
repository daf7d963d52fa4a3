"""The one training loop and what it is built from: state, optimizer, checkpoints, writers, devices."""
