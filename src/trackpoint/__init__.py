"""trackpoint: a fast, configurable event tracker for AdTech and MarTech."""

__version__ = "0.1.0"
