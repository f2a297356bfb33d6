"""Prometheus metrics of the ingest pipeline."""

from prometheus_client import Counter, Histogram

EVENTS_ACCEPTED = Counter("journeys_events_accepted_total", "Events stored (after dedupe)")
EVENTS_DUPLICATE = Counter("journeys_events_duplicate_total", "Retried events already stored")
EVENTS_REJECTED = Counter("journeys_events_rejected_total", "Events refused, by reason", ["code"])
REQUESTS_REFUSED = Counter(
    "journeys_ingest_requests_refused_total", "Ingest requests answered 4xx/5xx", ["status"]
)
COMMIT_EVENTS = Histogram(
    "journeys_commit_events",
    "Events per group commit",
    buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000),
)
COMMIT_SECONDS = Histogram(
    "journeys_commit_seconds",
    "Duration of a group commit",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
COMMIT_RACES = Counter(
    "journeys_commit_races_total",
    "Group commits run again with ON CONFLICT: a concurrent commit stored one of their messageIds",
)
