"""The anonymize_ip preprocessor: the preprocessor itself (preprocessor.py)."""
