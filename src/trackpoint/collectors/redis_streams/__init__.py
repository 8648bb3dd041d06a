"""The redis_streams collector: events appended to Redis Streams, deduplicated by id in one script call per stream
and batch (collector.py), and its options (config.py, imported without the client library)."""
