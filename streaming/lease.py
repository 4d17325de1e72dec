"""One `flo-seg stream` per checkpoint: a lease file in the checkpoint folder, held by the running driver.

Spark does not stop a second query on the same checkpoint from starting; the two then race on the
offset log and the one already running dies. So before the query starts, the driver takes the lease
`<checkpoint>/_flo_seg_lease.json` (owner host, pids, run id, start and heartbeat times) through
Hadoop's FileSystem API, which reaches HDFS, S3 and ABFS like a local folder; a daemon thread
refreshes the heartbeat every `HEARTBEAT_S` and the lease is deleted on a clean stop.

A starter that finds a lease:
- refuses it when the owner runs on this machine and its process is still the one that wrote it,
  or when the owner is on another machine and its heartbeat advances while the starter watches;
- takes it over at once when the owner is on this machine and its processes are gone (kill -9,
  crash: a restart never waits), and with a warning when the heartbeat is older than `TTL_S` or did
  not advance for `TTL_S` of watching (a crashed driver elsewhere: a YARN or Kubernetes restart on
  another node waits at most one TTL instead of being refused).
"""

from __future__ import annotations

import datetime as dt
import enum
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from py4j.java_gateway import is_instance_of
from py4j.protocol import Py4JJavaError
from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

LEASE_FILE = "_flo_seg_lease.json"
# Heartbeats are one read and one small write: every 5 s is nothing even on S3.
HEARTBEAT_S = 5.0
# Six missed heartbeats: covers driver GC pauses and storage retries of tens of seconds (a false
# takeover kills the running stream, the very failure this prevents) while a crashed driver on
# another machine blocks its restart for at most half a minute. Clocks of the machines must agree
# to well within this (NTP does).
TTL_S = 30.0
# A holder that could not refresh for this long stops its query before others may call it stale.
FENCE_AFTER_S = TTL_S - 2 * HEARTBEAT_S
# Wait after creating the lease before confirming it is still ours: far longer than the storage round
# trips in which a racing starter could replace it (a check-then-write create on S3, a takeover's
# read-then-delete).
SETTLE_S = 1.0
POLL_S = 1.0
_UNKNOWN = "unknown"


class CheckpointInUse(ValueError):
    """Another stream holds the checkpoint; a ValueError so `flo-seg stream` exits 2 with one line."""


@dataclass(frozen=True, kw_only=True)
class Owner:
    """Which driver holds a lease, precisely enough to tell on its machine whether it still runs."""

    host: str
    # Boot id and pid namespace: where the same pid names the same process (same kernel, same container).
    machine: str
    pid: int
    # Start time of the pid in clock ticks since boot (/proc): a recycled pid has another one.
    pid_start: str | None = None
    jvm_pid: int | None = None
    jvm_start: str | None = None


@dataclass(frozen=True, kw_only=True)
class Lease:
    """The lease file's content; times are seconds since the epoch."""

    owner: Owner
    run_id: str
    started_at: float
    heartbeat_at: float

    @property
    def is_readable(self) -> bool:
        """False for the stand-in of a file that could not be parsed."""
        return self.owner.pid > 0

    def to_json(self) -> bytes:
        """What is written to the lease file (readable by a person looking at the checkpoint)."""
        record: dict[str, Any] = {
            "run_id": self.run_id,
            **asdict(self.owner),
            "started_at": _iso(self.started_at),
            "heartbeat_at": _iso(self.heartbeat_at),
        }
        return json.dumps(record, indent=1).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Lease:
        """Parse a lease file; ValueError when it is not one (or only partly written)."""
        try:
            record = json.loads(data)
            owner = Owner(
                host=str(record["host"]),
                machine=str(record["machine"]),
                pid=int(record["pid"]),
                pid_start=record.get("pid_start"),
                jvm_pid=record.get("jvm_pid"),
                jvm_start=record.get("jvm_start"),
            )
            return cls(
                owner=owner,
                run_id=str(record["run_id"]),
                started_at=_epoch(record["started_at"]),
                heartbeat_at=_epoch(record["heartbeat_at"]),
            )
        except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as exc:
            raise ValueError(f"not a lease file: {exc}") from exc

    @classmethod
    def unreadable(cls, modified_at: float) -> Lease:
        """Stand-in for a garbled file: foreign, and as fresh as the file's modification time."""
        return cls(
            owner=Owner(host=_UNKNOWN, machine=_UNKNOWN, pid=0),
            run_id=f"unreadable@{modified_at}",
            started_at=modified_at,
            heartbeat_at=modified_at,
        )


def _iso(epoch_s: float) -> str:
    return dt.datetime.fromtimestamp(round(epoch_s, 3), dt.UTC).isoformat(timespec="milliseconds")


def _epoch(iso: str) -> float:
    return round(dt.datetime.fromisoformat(iso).timestamp(), 3)


def now_ms() -> float:
    """The wall clock at the lease file's precision, so a written lease reads back equal."""
    return round(time.time(), 3)


class Verdict(enum.Enum):
    """What a starter may do with a lease it found."""

    OURS = "ours"
    DEAD = "dead"  # same machine, the owner's processes are gone: take over now
    STALE = "stale"  # heartbeat older than the TTL: take over with a warning
    ALIVE = "alive"  # same machine, the owner still runs: refuse
    FRESH = "fresh"  # another machine, recent heartbeat: refuse once it is seen to beat


def decide(
    lease: Lease,
    *,
    run_id: str,
    me: Owner,
    now: float,
    is_running: Callable[[Owner], bool],
    ttl_s: float = TTL_S,
) -> Verdict:
    """The takeover rules on a parsed lease; pure but for `is_running`, which is only asked about this machine."""
    if lease.run_id == run_id:
        return Verdict.OURS
    same_machine = lease.owner.host == me.host and lease.owner.machine == me.machine
    if same_machine and not is_running(lease.owner):
        return Verdict.DEAD
    if now - lease.heartbeat_at > ttl_s:
        return Verdict.STALE
    return Verdict.ALIVE if same_machine else Verdict.FRESH


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """State letter and start time of a pid from /proc, or None when it cannot be read."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
        fields = text.rsplit(")", 1)[1].split()  # the command name before ")" may hold spaces
        return fields[0], fields[19]  # fields 3 and 22 of proc(5)
    except (OSError, IndexError):
        return None


def process_start(pid: int) -> str | None:
    """The pid's start time (clock ticks since boot), which tells a recycled pid from the original."""
    stat = _proc_stat(pid)
    return None if stat is None else stat[1]


def is_process_running(pid: int | None, start: str | None) -> bool:
    """True while `pid` is alive, not a zombie, and (where /proc tells) still the process that started at `start`."""
    if pid is None or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by another user
    stat = _proc_stat(pid)
    if stat is None:
        return not Path("/proc/self/stat").exists()  # no procfs (macOS): the signal check is all there is
    state, started = stat
    if state in ("Z", "X"):
        return False
    return start is None or started == start


def owner_is_running(owner: Owner) -> bool:
    """Either driver process (Python or its JVM) of a lease's owner still runs: the query may still write."""
    return is_process_running(owner.pid, owner.pid_start) or is_process_running(owner.jvm_pid, owner.jvm_start)


def machine_id() -> str:
    """Boot id and pid namespace of this process, '' where the system does not say."""
    parts = []
    try:
        parts.append(Path("/proc/sys/kernel/random/boot_id").read_text(encoding="ascii").strip())
        parts.append(os.readlink("/proc/self/ns/pid"))
    except OSError:
        pass
    return " ".join(parts)


def current_owner(spark: SparkSession) -> Owner:
    """This driver: its host, machine, Python pid and JVM pid, each with its start time."""
    jvm = spark.sparkContext._jvm
    jvm_pid = int(jvm.java.lang.ProcessHandle.current().pid()) if jvm is not None else None
    pid = os.getpid()
    return Owner(
        host=socket.gethostname(),
        machine=machine_id(),
        pid=pid,
        pid_start=process_start(pid),
        jvm_pid=jvm_pid,
        jvm_start=None if jvm_pid is None else process_start(jvm_pid),
    )


class LeaseStore(Protocol):
    """Where a lease lives: the file operations the protocol needs, nothing more."""

    checkpoint: str
    uri: str

    def read(self) -> tuple[bytes, float] | None:
        """Content and modification time (epoch seconds), or None when there is no lease."""

    def create(self, data: bytes) -> bool:
        """Write the lease only if none exists; False when one exists."""

    def overwrite(self, data: bytes) -> None:
        """Replace the lease's content."""

    def delete(self) -> None:
        """Remove the lease."""


class LeaseFile:
    """The lease file of one checkpoint (or another small file beside it, `name`) through Hadoop's
    FileSystem API, so a URI works like a local path."""

    def __init__(self, spark: SparkSession, checkpoint: str, name: str = LEASE_FILE) -> None:
        sc = spark.sparkContext
        jvm, gateway = sc._jvm, sc._gateway
        if jvm is None or gateway is None or sc._jsc is None:
            raise RuntimeError("the checkpoint lease needs a classic (JVM) SparkSession")
        hadoop_path = jvm.org.apache.hadoop.fs.Path
        self.checkpoint = checkpoint
        self._jvm = jvm
        self._gateway = gateway
        self._path = hadoop_path(hadoop_path(checkpoint), name)
        fs = self._path.getFileSystem(sc._jsc.hadoopConfiguration())
        if is_instance_of(gateway, fs, "org.apache.hadoop.fs.ChecksumFileSystem"):
            fs = fs.getRawFileSystem()  # no .crc side file that a rewritten lease could disagree with
        self._fs = fs
        qualified = fs.makeQualified(self._path)
        self.uri = str(qualified.toString())
        # Hadoop's local create(path, overwrite=false) checks, then opens: not atomic. O_EXCL is.
        uri = qualified.toUri()
        self._local = str(uri.getPath()) if uri.getScheme() == "file" else None

    def read(self) -> tuple[bytes, float] | None:
        """Content and modification time (epoch seconds), or None when there is no lease."""
        try:
            modified_ms = self._fs.getFileStatus(self._path).getModificationTime()
            stream = self._fs.open(self._path)
        except Py4JJavaError as exc:
            if self._is(exc, "java.io.FileNotFoundException"):
                return None
            raise
        try:
            data = self._jvm.org.apache.commons.io.IOUtils.toByteArray(stream)
        finally:
            stream.close()
        return bytes(data), modified_ms / 1000.0

    def create(self, data: bytes) -> bool:
        """Write the lease only if none exists, atomically where the storage can; False when one exists."""
        if self._local is not None:
            Path(self._local).parent.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(self._local, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            return True
        try:
            stream = self._fs.create(self._path, False)
        except Py4JJavaError as exc:
            already = self._is(exc, "org.apache.hadoop.fs.FileAlreadyExistsException")
            # HDFS: another client is creating it at this very moment.
            if already or "AlreadyBeingCreatedException" in str(exc.java_exception.getClass().getName()):
                return False
            raise
        self._write(stream, data)
        return True

    def overwrite(self, data: bytes) -> None:
        """Replace the lease's content (the heartbeat); readers may briefly see it partly written."""
        self._write(self._fs.create(self._path, True), data)

    def delete(self, *, recursive: bool = False) -> None:
        """Remove the lease file (or, `recursive`, the folder of that name)."""
        self._fs.delete(self._path, recursive)

    def _write(self, stream: Any, data: bytes) -> None:
        try:
            stream.write(bytearray(data))
        finally:
            stream.close()

    def _is(self, exc: Py4JJavaError, class_name: str) -> bool:
        return bool(is_instance_of(self._gateway, exc.java_exception, class_name))


def read_lease(store: LeaseStore, *, attempts: int = 4, pause_s: float = 0.25) -> Lease | None:
    """The current lease; a file caught mid-write is read again, one that stays garbled gets a stand-in."""
    for attempt in range(attempts):
        found = store.read()
        if found is None:
            return None
        data, modified_at = found
        try:
            return Lease.from_json(data)
        except ValueError:
            if attempt == attempts - 1:
                log.warning(
                    "checkpoint %s: lease file %s is not readable; judged by its age", store.checkpoint, store.uri
                )
                return Lease.unreadable(modified_at)
            time.sleep(pause_s)
    return None


def in_use_message(checkpoint: str, lease: Lease, now: float) -> str:
    """The one line a refused `flo-seg stream` prints."""
    age = max(0.0, now - lease.heartbeat_at)
    if not lease.is_readable:
        holder = f"unreadable lease file written {age:.0f} s ago"
    else:
        holder = f"host {lease.owner.host}, pid {lease.owner.pid}, heartbeat {age:.0f} s ago"
    return f"checkpoint {checkpoint} is in use by another flo-seg stream ({holder}); stop it first"


def acquire_lease(
    store: LeaseStore,
    *,
    owner: Owner,
    ttl_s: float = TTL_S,
    settle_s: float = SETTLE_S,
    poll_s: float = POLL_S,
    is_running: Callable[[Owner], bool] = owner_is_running,
) -> Lease:
    """Take the checkpoint's lease under the takeover rules, or raise CheckpointInUse."""
    run_id = uuid.uuid4().hex
    started_at = now_ms()
    watched: Lease | None = None
    watch_since = 0.0
    # Only a guard against leases that change hands forever: a watch lasts one TTL, reads take seconds at most.
    deadline = time.monotonic() + 2 * ttl_s + settle_s + 30.0
    while True:
        if time.monotonic() >= deadline:
            raise CheckpointInUse(f"checkpoint {store.checkpoint}: its lease kept changing hands; try again")
        mine = Lease(owner=owner, run_id=run_id, started_at=started_at, heartbeat_at=now_ms())
        if store.create(mine.to_json()):
            time.sleep(settle_s)
            held = read_lease(store)
            if held is not None and held.run_id == run_id:
                log.info(
                    "checkpoint %s: lease %s taken by run %s (heartbeat every %.0f s, TTL %.0f s)",
                    store.checkpoint,
                    store.uri,
                    run_id,
                    HEARTBEAT_S,
                    ttl_s,
                )
                return mine
            continue  # another starter replaced it: judge that one
        current = read_lease(store)
        if current is None:
            continue  # released in the meantime
        now = time.time()
        verdict = decide(current, run_id=run_id, me=owner, now=now, is_running=is_running, ttl_s=ttl_s)
        if verdict is Verdict.FRESH:
            if watched is None or watched.run_id != current.run_id:
                watched, watch_since = current, time.monotonic()
            elif watched.heartbeat_at != current.heartbeat_at:
                raise CheckpointInUse(in_use_message(store.checkpoint, current, now))
            elif time.monotonic() - watch_since >= ttl_s:
                verdict = Verdict.STALE  # silent for a whole TTL by our own clock, whatever its clock says
        if verdict is Verdict.ALIVE:
            raise CheckpointInUse(in_use_message(store.checkpoint, current, now))
        if verdict is Verdict.FRESH:
            time.sleep(poll_s)
            continue
        if verdict is Verdict.OURS:
            return current
        if verdict is Verdict.DEAD:
            log.info(
                "checkpoint %s: the stream that held it (pid %d on this host) is gone; taking over its lease",
                store.checkpoint,
                current.owner.pid,
            )
        else:
            log.warning(
                "checkpoint %s: taking over a stale lease (host %s, pid %d, heartbeat %.0f s ago, TTL %.0f s)",
                store.checkpoint,
                current.owner.host,
                current.owner.pid,
                max(0.0, now - current.heartbeat_at),
                ttl_s,
            )
        # Only the lease that was judged: another starter may have replaced it meanwhile.
        if read_lease(store) == current:
            store.delete()


class LeaseKeeper:
    """Refreshes a held lease from a daemon thread and releases it; reports when the lease is lost."""

    def __init__(
        self,
        store: LeaseStore,
        lease: Lease,
        *,
        on_lost: Callable[[str], None],
        interval_s: float = HEARTBEAT_S,
        fence_after_s: float = FENCE_AFTER_S,
    ) -> None:
        self.store = store
        self.lease = lease
        self.on_lost = on_lost
        self.interval_s = interval_s
        self.fence_after_s = fence_after_s
        self._last_ok = time.monotonic()
        self._stop = threading.Event()
        # A heartbeat in flight must finish before release deletes the file, or it would write it back.
        self._lock = threading.Lock()
        self._released = False
        self._thread = threading.Thread(target=self._run, name="flo-seg-lease-heartbeat", daemon=True)

    def start(self) -> None:
        """Begin heartbeats."""
        self._thread.start()

    def beat(self) -> bool:
        """One refresh; False (after reporting why) when the lease is no longer ours."""
        with self._lock:
            if self._released:
                return False
            current = read_lease(self.store)
            # A garbled file can only be our own interrupted rewrite: nobody else creates over an existing one.
            if current is None or (current.is_readable and current.run_id != self.lease.run_id):
                taker = "deleted" if current is None else f"taken by host {current.owner.host} pid {current.owner.pid}"
                self._lose(f"the lease of checkpoint {self.store.checkpoint} was {taker}")
                return False
            self.lease = replace(self.lease, heartbeat_at=now_ms())
            self.store.overwrite(self.lease.to_json())
            self._last_ok = time.monotonic()
            return True

    def release(self) -> None:
        """Stop heartbeats and delete the lease if it is still ours; never raises (it runs on the way out)."""
        self._stop.set()
        with self._lock:
            self._released = True
            try:
                current = read_lease(self.store)
                if current is not None and current.run_id == self.lease.run_id:
                    self.store.delete()
                    log.info("checkpoint %s: lease released", self.store.checkpoint)
            except Exception as exc:  # the next start takes it over: same host at once, elsewhere after the TTL
                log.warning("checkpoint %s: could not release the lease: %s", self.store.checkpoint, exc)
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=self.interval_s)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                if not self.beat():
                    return
            except Exception as exc:  # a storage hiccup must not stop the stream; the fence below bounds it
                log.warning("checkpoint %s: lease heartbeat failed: %s", self.store.checkpoint, exc)
            silent = time.monotonic() - self._last_ok
            if silent > self.fence_after_s:
                self._lose(f"the lease of checkpoint {self.store.checkpoint} could not be refreshed for {silent:.0f} s")
                return

    def _lose(self, reason: str) -> None:
        self._stop.set()
        log.error("%s; stopping this stream", reason)
        self.on_lost(reason)


@contextmanager
def checkpoint_lease(spark: SparkSession, checkpoint: str, *, on_lost: Callable[[str], None]) -> Iterator[Lease]:
    """Hold the checkpoint's lease around a block: acquired before it, refreshed during it, released after it."""
    store = LeaseFile(spark, checkpoint)
    lease = acquire_lease(store, owner=current_owner(spark))
    keeper = LeaseKeeper(store, lease, on_lost=on_lost)
    keeper.start()
    try:
        yield lease
    finally:
        keeper.release()
