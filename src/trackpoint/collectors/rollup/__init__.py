"""Hourly rollups: a built-in collector that counts events per hour (UTC), event type and configured dims into
SQLite, each event id once, and the reports read from them (the admin route, `trackpoint report`, and the same
report straight over the log files with DuckDB).
"""
