"""The decrypt_price preprocessor: the preprocessor itself (preprocessor.py)."""
