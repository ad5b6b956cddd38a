"""Run one call in a fresh child process: how the pipeline trains each domain.

Two HF Trainers in two threads of one process share accelerate's global state (one's reset crashed the
other) and torch's global random generator; a process per training shares neither, so domains can train
side by side and each trains bit-identically whatever else runs. A crash in the child (a segfault, the OOM
killer) fails only its own domain. The child is 'spawn'ed (no forked locks or CUDA state), pays the
imports once (~5-8 s here, measured in the README), exits with its parent, and is killed if the caller
stops waiting (a Prefect timeout, Ctrl-C).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from lora_pipeline.errors import PipelineError


class ChildProcessDied(PipelineError, RuntimeError):
    """The child process ended without an answer (killed, out of memory, crashed in native code)."""


def _exit_with_parent(parent_pid: int) -> None:
    while os.getppid() == parent_pid:  # re-parented: the caller is gone, nobody will read the result
        time.sleep(1.0)
    os._exit(1)


def _child(conn, fn: Callable, args: tuple, parent_pid: int) -> None:
    threading.Thread(target=_exit_with_parent, args=(parent_pid,), daemon=True).start()
    try:
        conn.send(("ok", fn(*args)))
    except BaseException as exc:  # noqa: BLE001 - everything goes back to the caller, as itself if it pickles
        detail = traceback.format_exc()
        try:
            conn.send(("error", exc, detail))
        except Exception:  # noqa: BLE001 - an unpicklable exception: send its text
            conn.send(("error", RuntimeError(f"{type(exc).__name__}: {exc}"), detail))
    finally:
        conn.close()


def call_in_child_process(fn: Callable, *args: Any, what: str = "the child process") -> Any:
    """``fn(*args)`` in a new process; returns its result or raises its exception (with the child's
    traceback as a note). ``fn``, the arguments and the result must pickle."""
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(send, fn, args, os.getpid()), daemon=True)
    process.start()
    send.close()  # only the child writes; EOF on receive then means it is gone
    message, answered = None, False
    try:
        # Short waits, not one blocking recv: Prefect's timeout and Ctrl-C reach this thread between them.
        while not receive.poll(0.5):
            if not process.is_alive() and not receive.poll(0):
                break
        try:
            message = receive.recv()
        except EOFError:
            pass
        answered = True
    finally:
        if process.is_alive() and not answered:
            process.kill()  # the caller stopped waiting: the work is abandoned, not left running
        process.join(timeout=30)
        receive.close()
    if message is None:
        code = process.exitcode
        how = f"signal {signal.Signals(-code).name}" if code is not None and code < 0 else f"exit code {code}"
        raise ChildProcessDied(f"{what} died without an answer ({how})")
    if message[0] == "ok":
        return message[1]
    exc = message[1]
    exc.add_note(f"in {what} (pid {process.pid}):\n{message[2]}")
    raise exc
