"""The asyncio coordinator: claim, dispatch, leases, stalls (and, later, the child pool)."""

from rqsup.supervisor.active import ActiveJob
from rqsup.supervisor.worker import Worker

__all__ = ["ActiveJob", "Worker"]
