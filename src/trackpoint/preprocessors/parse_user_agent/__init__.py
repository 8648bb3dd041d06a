"""The parse_user_agent preprocessor: the preprocessor itself (preprocessor.py)."""
