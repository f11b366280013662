"""The ``rqsup`` command (click), one module per group: main (check, start,
metrics), admin (status, jobs, job, ...), check (what ``rqsup check`` runs)."""

from rqsup.cli.main import main

__all__ = ["main"]
