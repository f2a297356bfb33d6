"""Database access: engine, embedded PostgreSQL, models, partitions."""
