"""Ad-tech protocols the tracker speaks: exchange price confirmations and auction macros.

Plain functions and small classes with no tracker state; preprocessors build on them.
"""
