"""The check_consent preprocessor: the preprocessor itself (preprocessor.py)."""
