"""The vast preprocessor: the preprocessor itself (preprocessor.py)."""
