"""The flag_invalid_traffic preprocessor: the preprocessor itself (preprocessor.py)."""
