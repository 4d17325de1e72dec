"""Local daemons (the Kafka broker, the Spark master and workers): pid files, liveness, ports, logs.

Shared by `devstack.stack` and `devstack.cluster`, which start JVMs as plain processes and must never
signal a process that merely reuses a recorded pid.
"""

from __future__ import annotations

import os
import socket
import time
from collections import deque
from collections.abc import Callable, Mapping
from contextlib import closing
from pathlib import Path

LOG_TAIL_LINES = 20


def read_pid(pid_path: Path) -> int | None:
    """The pid an `up` recorded, or None when there is none or it is unreadable."""
    try:
        return int(pid_path.read_text(encoding="ascii").strip())
    except (OSError, ValueError):
        return None


def is_java_main(pid: int, main_class: str) -> bool:
    """Alive and, where /proc tells, really running `main_class`, so a recycled pid is never signalled."""
    try:
        # When this very process started it (tests, one long session), reap it once it exits.
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    proc = Path(f"/proc/{pid}")
    if not proc.exists():
        return True  # no /proc (macOS): the signal check above is all there is
    try:
        state = (proc / "stat").read_text(encoding="ascii", errors="replace").rsplit(")", 1)[1].split()[0]
        cmdline = (proc / "cmdline").read_bytes()
    except (OSError, IndexError):
        return False
    if state in ("Z", "X"):
        return False  # exited, waiting for a parent that is not us to reap it
    # The command line reads empty for a moment while the new process execs java, and a launcher script
    # (spark-class) carries the class as an argument until it execs java: neither is a stranger.
    return not cmdline or main_class.encode() in cmdline.split(b"\0")


def wait_until(predicate: Callable[[], bool], timeout_s: float, interval_s: float = 0.2) -> bool:
    """Poll a no-argument predicate until it is true or the timeout passes; its last value."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return bool(predicate())


def is_port_taken(host: str, port: int) -> bool:
    """True when a server could not bind the port (the same SO_REUSEADDR bind the JVM does)."""
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def is_port_open(host: str, port: int, timeout_s: float = 1.0) -> bool:
    """A cheap TCP check before a slower protocol handshake."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last lines of a log, for error messages that should explain themselves."""
    if not path.exists():
        return "(no log written)"
    with path.open(encoding="utf-8", errors="replace") as fh:
        return "".join(deque(fh, maxlen=lines)).rstrip("\n") or "(the log is still empty)"


def env_int(env: Mapping[str, str], name: str, default: int, error: type[Exception] = ValueError) -> int:
    """An integer variable, with an error (of the caller's type) that names it instead of a traceback."""
    value = env.get(name) or str(default)
    try:
        return int(value)
    except ValueError:
        raise error(f"{name} must be an integer, not {value!r}") from None
