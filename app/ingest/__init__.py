"""The Segment-compatible ingest front door."""
