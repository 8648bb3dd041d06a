"""The admin port: health, readiness, Prometheus metrics (served by the supervisor)."""
