"""Experiment sweeps (`<name>.py` with `get_sweep()`) and their launcher (`python -m experiments.launch`)."""
