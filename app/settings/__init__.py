"""Per-workspace settings (server key): the journey model."""
