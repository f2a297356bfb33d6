"""Cross-cutting pieces: settings, logging, errors, security."""
