"""Workspaces (tenants), their keys, and authentication of requests."""
