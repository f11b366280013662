"""Imported by the forkserver at its start: makes it not dumpable (a child of
the same uid cannot read its memory), then imports the processor modules
named in ``RQSUP_PRELOAD`` (comma-separated) so that every child forked from
it has them already.

A module that fails to import is skipped here (a child reports the real
error when it imports it itself at boot). The stdlib's preload only
tolerates ImportError: any other exception at import (a RuntimeError, a
SyntaxError) would kill the forkserver and with it every queue's children.
"""

from __future__ import annotations

import contextlib
import importlib
import os

from rqsup.sandbox.hygiene import not_dumpable

not_dumpable()
for _name in filter(None, os.environ.get("RQSUP_PRELOAD", "").split(",")):
    with contextlib.suppress(BaseException):
        importlib.import_module(_name)
