"""The hot-folder quality-gate daemon."""
