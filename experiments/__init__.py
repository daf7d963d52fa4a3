"""Experiment sweeps and their launcher: none are defined yet (planned with multi-host support)."""
