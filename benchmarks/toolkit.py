"""What the benchmarks share: what the numbers were measured on, CPU and memory meters, a Markdown table."""

from __future__ import annotations

import os
import platform
import subprocess
import threading
import time
from collections.abc import Iterable, Sequence
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

import psutil

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

# ---------------------------------------------------------------- machine and load


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what `platform` knows, else "unknown"."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def uptime() -> str:
    """What `uptime` prints (the load averages), or the load averages alone where it cannot run."""
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return f"load average {os.getloadavg()}"


def machine(spark: SparkSession, **extra: object) -> dict[str, object]:
    """What the numbers were measured on: the host, the versions and the session; `extra` keys added after
    delta_spark (e.g. a library version only one benchmark uses)."""
    jvm = spark.sparkContext._jvm
    memory = psutil.virtual_memory()
    head: dict[str, object] = {
        "nproc": os.cpu_count(),
        "memory_total_bytes": memory.total,
        "memory_available_bytes_at_start": memory.available,
        "cpu_model": cpu_model(),
        "python": platform.python_version(),
        "java": str(jvm.java.lang.System.getProperty("java.version")) if jvm is not None else "unknown",
        "spark": spark.version,
        "delta_spark": metadata.version("delta-spark"),
    }
    tail: dict[str, object] = {
        "master": spark.sparkContext.master,
        "default_parallelism": spark.sparkContext.defaultParallelism,
        "shuffle_partitions": spark.conf.get("spark.sql.shuffle.partitions", None),
        "driver_memory": spark.conf.get("spark.driver.memory", None),
    }
    clash = sorted(extra.keys() & (head.keys() | tail.keys()))
    if clash:
        raise ValueError(f"machine(): extra keys {clash} would replace the common ones")
    return {**head, **extra, **tail}


class CpuMeter:
    """Busy cores of the machine and of this benchmark's own processes (driver, JVM, producers) over a span.

    The machine is shared, so the difference is what other jobs took while we measured.
    """

    def __init__(self) -> None:
        self.load_before = os.getloadavg()[0]
        self.started = time.monotonic()
        self.busy, self.ours = self._read()

    @staticmethod
    def _read() -> tuple[float, float]:
        total = psutil.cpu_times()
        busy = sum(total) - total.idle - getattr(total, "iowait", 0.0)
        me = psutil.Process()
        ours = 0.0
        for proc in [me, *me.children(recursive=True)]:
            try:
                times = proc.cpu_times()
                ours += times.user + times.system
            except psutil.Error:
                pass
        own = me.cpu_times()
        return busy, ours + own.children_user + own.children_system

    def stop(self) -> dict[str, float]:
        """Average busy cores since construction, and the 1-minute load average before and after."""
        busy, ours = self._read()
        wall = max(time.monotonic() - self.started, 1e-9)
        machine_cores = (busy - self.busy) / wall
        ours_cores = (ours - self.ours) / wall
        return {
            "machine_busy_cores": round(machine_cores, 2),
            "benchmark_cores": round(ours_cores, 2),
            "other_cores": round(max(machine_cores - ours_cores, 0.0), 2),
            "load_before": self.load_before,
            "load_after": os.getloadavg()[0],
        }


class MemorySampler:
    """Peak RSS of this Python driver and of its Spark JVM, sampled by a background thread."""

    def __init__(self, interval_s: float = 0.1) -> None:
        self._interval_s = interval_s
        self._driver = psutil.Process()
        self._jvm: psutil.Process | None = None
        self._lock = threading.Lock()
        self._peak_driver = 0
        self._peak_jvm = 0
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def start(self) -> None:
        """Begin sampling."""
        self._thread.start()

    def stop(self) -> None:
        """Stop sampling and wait for the thread."""
        self._stopped.set()
        self._thread.join()

    def _jvm_process(self) -> psutil.Process | None:
        # PySpark starts the JVM through spark-submit's shell scripts, so it is a child or a grandchild.
        if self._jvm is not None and self._jvm.is_running():
            return self._jvm
        self._jvm = next((p for p in self._driver.children(recursive=True) if "java" in p.name().lower()), None)
        return self._jvm

    def _rss(self) -> tuple[int, int]:
        driver = self._driver.memory_info().rss
        try:
            jvm = self._jvm_process()
            return driver, jvm.memory_info().rss if jvm is not None else 0
        except psutil.Error:
            self._jvm = None
            return driver, 0

    def sample(self) -> None:
        """Take one sample now."""
        driver, jvm = self._rss()
        with self._lock:
            self._peak_driver = max(self._peak_driver, driver)
            self._peak_jvm = max(self._peak_jvm, jvm)

    def reset(self) -> None:
        """Start a new peak window at the current RSS."""
        driver, jvm = self._rss()
        with self._lock:
            self._peak_driver, self._peak_jvm = driver, jvm

    def cpu_seconds(self) -> tuple[float, float]:
        """CPU seconds (user + system) used so far by the driver and by the JVM."""
        driver = sum(self._driver.cpu_times()[:2])
        try:
            jvm = self._jvm_process()
            return driver, sum(jvm.cpu_times()[:2]) if jvm is not None else 0.0
        except psutil.Error:
            return driver, 0.0

    def peaks(self) -> tuple[int, int]:
        """Peak (driver, JVM) RSS in bytes since the last reset."""
        self.sample()
        with self._lock:
            return self._peak_driver, self._peak_jvm

    def _run(self) -> None:
        while not self._stopped.wait(self._interval_s):
            self.sample()


# ---------------------------------------------------------------- reporting


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[object]], *, align: Sequence[str] = "") -> str:
    """A Markdown table: `| a | b |` lines, the cells as `str()` gives them, nothing escaped.

    `align` has one letter per column, "l" (`---`) or "r" (`---:`); columns past its end are left-aligned.
    Every row must have as many cells as there are headers.
    """
    if len(align) > len(headers) or set(align) - {"l", "r"}:
        raise ValueError(f"align must be at most {len(headers)} of 'l' and 'r', got {align!r}")
    rules = ["---:" if a == "r" else "---" for a in align] + ["---"] * (len(headers) - len(align))
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(rules) + "|"]
    for row in rows:
        if len(row) != len(headers):
            raise ValueError(f"row {list(row)!r} has {len(row)} cells for {len(headers)} headers")
        lines.append("| " + " | ".join(str(cell) for cell in row) + " |")
    return "\n".join(lines)
