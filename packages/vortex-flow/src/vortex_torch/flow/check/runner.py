"""Run one check in a worker process (:mod:`.worker`) and hold the flow to ``--timeout`` while it loads.

Why a process and not a thread with ``join(timeout)``: a flow file is arbitrary Python. A thread that does not
finish cannot be stopped, and one stuck in a C call that holds the GIL (a pathological regex, a huge
``sum(range(...))``) stalls the waiting thread's ``join`` too, so the timeout would never fire; ``os._exit`` or
a crash inside Triton's interpreter would end the CLI without a report. A process can be killed at the
deadline and its death reported. The cost is a second interpreter start (about two seconds of imports), which
the load deadline does not count: it starts when the worker says it is ready.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from typing import IO, Any

from .options import CheckOptions

#: seconds the worker may take to import torch and Vortex before it is declared broken
STARTUP_LIMIT_S = 120.0

__all__ = ["STARTUP_LIMIT_S", "run_check"]


def _read_events(stream: IO[str], events: queue.Queue[dict[str, Any] | None]) -> None:
    for line in stream:
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(event, dict):
            events.put(event)
    events.put(None)


def _kill(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # its own session: this also stops whatever the flow started
    except (ProcessLookupError, PermissionError, AttributeError):
        proc.kill()
    proc.wait()


def _exit_text(rc: int) -> str:
    if rc < 0:
        try:
            return f"signal {signal.Signals(-rc).name}"
        except ValueError:
            return f"signal {-rc}"
    return f"exit code {rc}"


def run_check(opts: CheckOptions) -> dict[str, Any]:
    """The report of ``vortex check`` for ``opts`` (see :mod:`.report`); never raises, never hangs in loading.

    A report with ``interrupted: True`` means the user pressed Ctrl-C.
    """
    t0 = time.perf_counter()
    base: dict[str, Any] = {
        "ok": False,
        "compiled_ok": None,
        "quality_ok": None,
        "file": opts.flow,
        "flow": None,
    }

    def failed(stage: str, message: str, **extra: Any) -> dict[str, Any]:
        return base | {"stage": stage, "error": message, "time_s": round(time.perf_counter() - t0, 2)} | extra

    cmd = [sys.executable, "-P", "-m", "vortex_torch.flow.check.worker", opts.to_json()]
    try:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True, start_new_session=True
        )  # stderr is inherited: progress bars and the flow's own output show as they happen
    except OSError as exc:
        return failed("start", f"could not start the check process {sys.executable!r}: {exc}")
    assert proc.stdout is not None
    events: queue.Queue[dict[str, Any] | None] = queue.Queue()
    threading.Thread(target=_read_events, args=(proc.stdout, events), daemon=True).start()
    stage = "start"
    deadline: float | None = time.monotonic() + STARTUP_LIMIT_S
    try:
        while True:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                event = events.get(timeout=wait)
            except queue.Empty:
                _kill(proc)
                if stage == "start":
                    return failed(
                        stage,
                        f"the check process did not start within {STARTUP_LIMIT_S:g} s (importing torch and "
                        "Vortex). Fix: check that `python -c 'import vortex_torch.flow'` works in this environment.",
                    )
                return failed(
                    stage,
                    f"flow {opts.flow} did not finish loading (import, construction, tracing) within "
                    f"{opts.timeout_s:g} s, and was stopped. Fix: look for a loop or a blocking call at import "
                    "time, in __init__ or in forward_indexer/forward_cache; if it is only slow, raise --timeout.",
                    timed_out=True,
                )
            if event is None:
                rc = proc.wait()
                return failed(
                    stage,
                    f"the check process ended with {_exit_text(rc)} before it reported (its messages, if any, "
                    "are above on stderr); something in the flow or in Vortex killed the process (os._exit, a "
                    "crash).",
                )
            kind = event.get("event")
            if kind == "ready":
                stage, deadline = "load", time.monotonic() + opts.timeout_s
            elif kind == "loaded":
                stage, deadline = "compile", None
            elif kind == "report":
                proc.wait()
                report: dict[str, Any] = event["report"]
                return report
    except KeyboardInterrupt:
        _kill(proc)
        return failed(stage, "interrupted (Ctrl-C)", interrupted=True)
    finally:
        _kill(proc)
