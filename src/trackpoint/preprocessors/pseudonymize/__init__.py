"""The pseudonymize preprocessor: the preprocessor itself (preprocessor.py)."""
