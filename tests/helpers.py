"""Waiting on conditions with a deadline (never sleeping for correctness)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

DEFAULT_TIMEOUT_S = 15.0


def wait_until(pred: Callable[[], Any], what: str, timeout: float = DEFAULT_TIMEOUT_S) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.005)


async def await_until(
    pred: Callable[[], Awaitable[Any] | Any], what: str, timeout: float = DEFAULT_TIMEOUT_S
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.005)
