"""The geo preprocessor: country, region, city and network from the client IP (preprocessor.py), its databases
(database.py), its start-up checks (checks.py) and its admin route (admin.py)."""
