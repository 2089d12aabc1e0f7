"""Metrics, structured logs and the health/metrics HTTP endpoint."""
