"""The issue_click_id preprocessor: the preprocessor itself (preprocessor.py)."""
