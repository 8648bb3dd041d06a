"""The process model: the supervisor, its worker processes and the control channel between them (reload, drain)."""
