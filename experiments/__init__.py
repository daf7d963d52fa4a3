"""Experiment sweeps: each file defines `get_sweep()`; see the README."""
