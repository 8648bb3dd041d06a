"""The stdout collector: events as JSON lines on standard output (collector.py)."""
