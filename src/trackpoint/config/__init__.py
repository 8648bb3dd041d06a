"""Configuration: the typed structs and the loader that validates a YAML file into them."""

from trackpoint.config.load import ConfigError, ConfigIssue, LoadedConfig, json_schema, load
from trackpoint.config.model import Config

__all__ = ["Config", "ConfigError", "ConfigIssue", "LoadedConfig", "json_schema", "load"]
