"""trackpoint: a fast, configurable event tracker for AdTech and MarTech."""

from trackpoint import _native

__version__ = "0.1.0"

_native.install()  # the compiled request path, or its pure-Python sources (see _native.py)
