"""The kafka collector: one message per event through confluent-kafka (librdkafka), idempotent, acks=all.

Options live in config.py, the collector (produce, delivery reports, health) in collector.py.
"""
