"""Launching a child through the forkserver without re-importing ``__main__``.

The stdlib's forkserver children run ``spawn.prepare()``, which imports the
launching program's ``__main__`` again from its path: under an application
that embeds a worker, every child would import (and run the unguarded top
level of) that program, costing tens of milliseconds and megabytes per
child. A child runs ``rqsup.sandbox.runtime.child_main``, importable by name,
so it needs no ``__main__``: this Process drops it from the preparation data.

This module is pickled into each child (as the Process's class), so it
imports only the standard library.
"""

from __future__ import annotations

import io
import os
from multiprocessing.context import ForkServerProcess
from typing import Any


class ChildProcess(ForkServerProcess):
    @staticmethod
    def _Popen(process_obj: Any) -> Any:
        return _popen_class()(process_obj)


def _popen_class() -> Any:
    from multiprocessing import forkserver, popen_forkserver, reduction, spawn, util
    from multiprocessing.context import set_spawning_popen

    class NoMainPopen(popen_forkserver.Popen):
        def _launch(self, process_obj: Any) -> None:
            prep_data = spawn.get_preparation_data(process_obj._name)
            prep_data.pop("init_main_from_path", None)
            prep_data.pop("init_main_from_name", None)
            buf = io.BytesIO()
            set_spawning_popen(self)
            try:
                reduction.dump(prep_data, buf)
                reduction.dump(process_obj, buf)
            finally:
                set_spawning_popen(None)
            self.sentinel, w = forkserver.connect_to_new_process(
                self._fds  # type: ignore[attr-defined]
            )
            _parent_w = os.dup(w)
            self.finalizer = util.Finalize(
                self, util.close_fds, (_parent_w, self.sentinel)  # type: ignore[attr-defined]
            )
            with open(w, "wb", closefd=True) as f:
                f.write(buf.getbuffer())
            self.pid = forkserver.read_signed(self.sentinel)

    return NoMainPopen
