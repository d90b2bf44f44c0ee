"""The processes the dev cluster starts are stopped by pid, and only while the pid still runs the
binary that was started: a recorded pid may belong to another process by now."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path


def process_is(pid: int, binary: str) -> bool:
    """True when pid still runs `binary` (a recorded pid may have been reused by now).

    Popen returns once the child's close-on-exec pipe closes, which the kernel does part-way
    through execve, before the new command line is in place: for a moment /proc/PID/cmdline
    reads empty. An empty command line of a process that is not a zombie is read again."""
    for _ in range(50):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            if cmdline:
                return cmdline.split(b"\0")[0].decode() == binary
            if "\nState:\tZ" in Path(f"/proc/{pid}/status").read_text():
                return False  # exited, not yet reaped
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            return False
        time.sleep(0.02)
    return False


def stop_process(pid: int, binary: str | None, grace: float = 15.0) -> bool:
    """SIGTERM, then SIGKILL after `grace` seconds, a process that still runs `binary`; reap it
    either way. True when it was running."""
    if not pid:
        return False
    running = bool(binary) and process_is(pid, binary)
    if running:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while process_is(pid, binary) and time.monotonic() < deadline:
            time.sleep(0.1)
        if process_is(pid, binary):
            os.kill(pid, signal.SIGKILL)
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    return running


def log_tail(logs: Path, name: str, lines: int = 25) -> str:
    """The last lines of a component's log, for start-up errors."""
    path = logs / f"{name}.log"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""
