"""Fields: declared field types, their converters and `Reject`, and the building of an event from its fields."""
