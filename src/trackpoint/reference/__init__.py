"""Generators of the reference docs (configuration, CLI, plugin API) and of the OpenAPI document."""
