"""Journeys: Segment-compatible event tracking and journey stitching on PostgreSQL."""

__version__ = "0.1.0"
