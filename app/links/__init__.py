"""Signed email links: open pixels and click redirects that record email events."""
