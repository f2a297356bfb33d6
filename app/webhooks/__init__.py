"""Webhooks: stage changes, merges and deletions POSTed to subscribers, signed."""
