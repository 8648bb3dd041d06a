"""The log collector: rotating JSON-lines files (collector.py) and the reader every tool uses (reader.py)."""
