"""Security features of the request path: signed tracking URLs and the click redirect policy.

Everything here is pure and built once at start-up; the edge calls it only for event types that use it.
"""
