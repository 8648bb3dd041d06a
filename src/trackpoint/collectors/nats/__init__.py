"""The nats collector: each event published to NATS JetStream with its id as `Nats-Msg-Id` (collector.py), and
its options (config.py, imported without the client library)."""
