"""The attribute_conversion preprocessor: the preprocessor itself (preprocessor.py)."""
