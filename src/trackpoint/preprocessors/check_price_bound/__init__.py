"""The check_price_bound preprocessor: the preprocessor itself (preprocessor.py)."""
