"""Checkpoints of other libraries, in and out, read and written without those libraries."""
