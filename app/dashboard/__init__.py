"""The dashboard: server-rendered pages (journey map, funnel, trends, channels, attribution,
profiles) for a workspace's read key, over the aggregate and profile services."""
