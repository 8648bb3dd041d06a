"""Conformance targets: one module per collector type, each naming a real server the shared battery runs against."""
