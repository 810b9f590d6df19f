"""Telemetry: the Prometheus metrics of the engine, read from the store."""
