"""Journeys: stages, sessions and channels computed from a customer's events."""
