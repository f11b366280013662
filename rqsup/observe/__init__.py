"""Seeing rqsup work: Prometheus metrics, per-minute history, traces."""
