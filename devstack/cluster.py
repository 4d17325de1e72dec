"""A local Spark standalone cluster (one master, two one-core workers) and `flo-seg` jobs submitted to it.

`python -m devstack.cluster up|down|status` (or `make cluster-up|cluster-down|cluster-status`) starts the
master and the workers as separate JVMs from the pyspark installation's own launcher
(`<pyspark>/bin/spark-class`), bound to 127.0.0.1. The pip wheel ships no `sbin/start-master.sh` or
`start-worker.sh` (only `spark-daemon.sh`), so each daemon is started here, detached, with its pid file
and log under the git-ignored state dir (`.stack/spark`, FLO_STACK_DIR). Every daemon runs in its own
process group, so `down` also ends the executors and Python workers a worker started.

`python -m devstack.cluster submit -- <flo-seg args>` (or `make cluster-submit ARGS="..."`) runs
`spark-submit --master spark://127.0.0.1:7077` in client mode with:

- the project as a zip of the packages schemas/batch/streaming/flo_seg, through `--py-files`. Not a
  wheel: pyspark puts only .zip/.egg/.jar py-files on the executors' sys.path (a .whl would reach the
  driver only). The zip is content-addressed (`flo_seg-<hash>.zip`), so concurrent submits never clash;
- a tiny launcher beside it as the primary resource, which calls `flo_seg.cli.main(argv)`;
- the Delta and Kafka connector jars of `.jars/spark` (FLO_SPARK_JARS_DIR) through `--jars`;
- `spark.pyspark.python`: the interpreter of driver and executors' Python workers. On this single machine
  it is the .venv's python (FLO_STACK_CLUSTER_PYTHON / --python to change), which has the third-party deps
  (pyspark, numpy, pandas, pyarrow, scipy). On a real cluster, ship a packed environment instead::

      python -m venv /tmp/env && /tmp/env/bin/pip install pyspark==4.2.0 numpy pandas pyarrow scipy \\
          venv-pack && /tmp/env/bin/venv-pack -p /tmp/env -o venv.tar.gz
      python -m devstack.cluster submit --master spark://<host>:7077 \\
          --spark-arg=--archives --spark-arg=venv.tar.gz#env \\
          --conf spark.pyspark.python=./env/bin/python --python "$(which python)" -- train --history ...

  (`--conf` given here wins over the generated one; `--python` is still the driver's interpreter.)

Nothing depends on the caller's working directory: the artifact, the launcher and the jars are found
from this module's location, lake and checkpoint paths come from the flo-seg flags or FLO_LAKE (resolved
to absolute paths on the driver, which executors on this machine share).
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devstack.procs import env_int, is_java_main, is_port_taken, read_pid, tail, wait_until

log = logging.getLogger(__name__)

SOURCE_DIR = Path(__file__).resolve().parents[1]
PACKAGES = ("schemas", "batch", "streaming", "flo_seg")
PACKAGE_FILE_SUFFIXES = (".py", ".json", ".properties")
MASTER_CLASS = "org.apache.spark.deploy.master.Master"
WORKER_CLASS = "org.apache.spark.deploy.worker.Worker"
PYTHON_DEPS = ("pyspark", "numpy", "pandas", "pyarrow", "scipy")
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_NOT_RUNNING = 3
# The fixed zip timestamp makes the artifact's bytes a function of the sources only.
ZIP_DATE_TIME = (1980, 1, 1, 0, 0, 0)
LAUNCHER = '''"""spark-submit's primary resource, written by devstack.cluster: flo-seg from the shipped artifact."""

import sys

import flo_seg
from flo_seg import cli


def main() -> int:
    print(f"flo-seg cluster: running flo_seg from {flo_seg.__file__}", file=sys.stderr)
    code = cli.main(sys.argv[1:])
    from pyspark.sql import SparkSession

    session = SparkSession.getActiveSession()
    if session is not None:
        sc = session.sparkContext
        print(f"flo-seg cluster: application {sc.applicationId} ({sc.appName}) on {sc.master}",
              file=sys.stderr)
        session.stop()
    return code


if __name__ == "__main__":
    sys.exit(main())
'''


class ClusterError(RuntimeError):
    """A failure the CLI reports as one clear message instead of a traceback."""


def pyspark_home() -> Path:
    """The pyspark installation, which is a complete Spark distribution (bin/, jars/, sbin/)."""
    import pyspark

    return Path(pyspark.__file__).resolve().parent


@dataclass(frozen=True, kw_only=True)
class ClusterSettings:
    """Where the standalone cluster lives and how it is sized; filled from flags and FLO_* in main()."""

    spark_home: Path
    state_dir: Path
    host: str = "127.0.0.1"
    master_port: int = 7077
    master_webui_port: int = 8080
    worker_webui_port: int = 8081
    workers: int = 2
    worker_cores: int = 1
    worker_memory: str = "2g"
    daemon_memory: str = "512m"
    start_timeout_s: float = 90.0
    stop_timeout_s: float = 30.0

    @property
    def spark_dir(self) -> Path:
        """Everything of this cluster in one folder: removing it (when down) is a full reset."""
        return self.state_dir / "spark"

    @property
    def master_url(self) -> str:
        """What spark-submit and the workers connect to."""
        return f"spark://{self.host}:{self.master_port}"

    @property
    def master_json_url(self) -> str:
        """The master web UI's JSON view: status, workers, applications."""
        return f"http://{self.host}:{self.master_webui_port}/json/"

    @property
    def settings_path(self) -> Path:
        """The settings the running cluster was started with, to refuse mixing two configurations."""
        return self.spark_dir / "cluster.json"

    def daemons(self) -> list[Daemon]:
        """The master first, then the workers: the start order (stopping goes the other way)."""
        master = Daemon(
            name="master",
            main_class=MASTER_CLASS,
            args=(
                "--host",
                self.host,
                "--port",
                str(self.master_port),
                "--webui-port",
                str(self.master_webui_port),
            ),
            ports=(("port", self.master_port), ("web UI port", self.master_webui_port)),
            folder=self.spark_dir / "master",
        )
        workers = []
        for i in range(1, self.workers + 1):
            folder = self.spark_dir / f"worker{i}"
            webui_port = self.worker_webui_port + i - 1
            args = (
                "--host",
                self.host,
                "--cores",
                str(self.worker_cores),
                "--memory",
                self.worker_memory,
                "--work-dir",
                str(folder / "work"),
                "--webui-port",
                str(webui_port),
                self.master_url,
            )
            workers.append(
                Daemon(
                    name=f"worker{i}",
                    main_class=WORKER_CLASS,
                    args=args,
                    ports=(("web UI port", webui_port),),
                    folder=folder,
                )
            )
        return [master, *workers]

    def as_json(self) -> str:
        """The fields that define what runs; a change needs `down` first."""
        keys = ("host", "master_port", "master_webui_port", "worker_webui_port", "workers")
        more = ("worker_cores", "worker_memory", "daemon_memory")
        return json.dumps({k: str(getattr(self, k)) for k in (*keys, *more)}, sort_keys=True)


@dataclass(frozen=True, kw_only=True)
class Daemon:
    """One JVM of the cluster: its class, arguments, ports, and the folder of its pid file and log."""

    name: str
    main_class: str
    args: tuple[str, ...]
    ports: tuple[tuple[str, int], ...]  # (what it is, number); a worker's RPC port is random
    folder: Path

    @property
    def log_path(self) -> Path:
        """The daemon's log (Spark logs to the console; stdout and stderr land here)."""
        return self.folder / f"{self.name}.log"

    @property
    def pid_path(self) -> Path:
        """Ties `down` and `status` to the process `up` started."""
        return self.folder / f"{self.name}.pid"


# ---------------------------------------------------------------- processes


def running_pid(daemon: Daemon) -> int | None:
    """The daemon's pid when it is alive, else None."""
    pid = read_pid(daemon.pid_path)
    return pid if pid is not None and is_java_main(pid, daemon.main_class) else None


def is_group_alive(pgid: int) -> bool:
    """Whether any process of a daemon's process group (its executors, Python workers) is left."""
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def stop_daemon(daemon: Daemon, pid: int, timeout_s: float) -> None:
    """SIGTERM (a worker then kills its executors), SIGKILL to the whole group only if something hangs."""
    log.info("stopping %s (pid %d)", daemon.name, pid)
    if is_java_main(pid, daemon.main_class):
        os.kill(pid, signal.SIGTERM)
        if not wait_until(lambda: not is_java_main(pid, daemon.main_class), timeout_s):
            log.warning("%s did not stop within %.0f s; killing it", daemon.name, timeout_s)
    # The daemon was started as the leader of its own session, so its pid is the group id: executors
    # and Python workers left behind get a moment to follow their worker, then SIGKILL.
    if is_group_alive(pid) and not wait_until(lambda: not is_group_alive(pid), 5.0):
        os.killpg(pid, signal.SIGKILL)
        if not wait_until(lambda: not is_group_alive(pid), 10.0):
            raise ClusterError(f"{daemon.name} (process group {pid}) survived SIGKILL")
    daemon.pid_path.unlink(missing_ok=True)


def daemon_env(settings: ClusterSettings, base: Mapping[str, str]) -> dict[str, str]:
    """The environment of spark-class: this Spark, loopback only, small daemon heaps, no port drift."""
    env = dict(base)
    env.update(
        SPARK_HOME=str(settings.spark_home),
        SPARK_LOCAL_IP=settings.host,
        SPARK_DAEMON_MEMORY=settings.daemon_memory,
        # Spark silently moves to the next port when one is taken; here that is an error to report.
        SPARK_DAEMON_JAVA_OPTS="-Dspark.port.maxRetries=0 -Duser.timezone=UTC",
    )
    return env


def start_daemon(settings: ClusterSettings, daemon: Daemon) -> int:
    """Launch one daemon detached (own session) through spark-class; output appended to its log."""
    daemon.folder.mkdir(parents=True, exist_ok=True)
    if daemon.log_path.exists() and daemon.log_path.stat().st_size:
        # Keep one previous run's log; the current one then starts with this run.
        daemon.log_path.replace(daemon.log_path.with_name(daemon.log_path.name + ".1"))
    command = [str(settings.spark_home / "bin" / "spark-class"), daemon.main_class, *daemon.args]
    with daemon.log_path.open("ab") as log_file:
        process = subprocess.Popen(
            command,
            cwd=daemon.folder,
            env=daemon_env(settings, os.environ),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    tmp = daemon.pid_path.with_suffix(".tmp")
    tmp.write_text(f"{process.pid}\n", encoding="ascii")
    tmp.replace(daemon.pid_path)
    log.info("started %s (pid %d), log %s", daemon.name, process.pid, daemon.log_path)
    return process.pid


# ---------------------------------------------------------------- the master's view


def master_state(settings: ClusterSettings, timeout_s: float = 2.0) -> dict[str, Any] | None:
    """The master's JSON (status, workers, apps), or None when its web UI does not answer."""
    try:
        with urllib.request.urlopen(settings.master_json_url, timeout=timeout_s) as response:
            state: dict[str, Any] = json.load(response)
            return state
    except (urllib.error.URLError, OSError, ValueError):
        return None


def alive_workers(state: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """Workers the master currently counts as ALIVE."""
    return [w for w in (state or {}).get("workers", []) if w.get("state") == "ALIVE"]


def is_master_alive(state: Mapping[str, Any] | None) -> bool:
    """The master answers and leads (a standby master would say STANDBY)."""
    return state is not None and state.get("status") == "ALIVE"


def is_ready(settings: ClusterSettings, state: Mapping[str, Any] | None) -> bool:
    """Master ALIVE with every worker registered."""
    return is_master_alive(state) and len(alive_workers(state)) >= settings.workers


# ---------------------------------------------------------------- up / down / status


@contextmanager
def cluster_lock(settings: ClusterSettings) -> Iterator[None]:
    """Serialise up/down calls (e.g. two make targets at once) on one state dir."""
    settings.spark_dir.mkdir(parents=True, exist_ok=True)
    with (settings.spark_dir / ".lock").open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def check_prerequisites(settings: ClusterSettings) -> None:
    """Fail early with the fix instead of a cryptic launcher error."""
    spark_class = settings.spark_home / "bin" / "spark-class"
    if not os.access(spark_class, os.X_OK):
        raise ClusterError(f"{spark_class} not found or not executable; is pyspark installed (make setup)?")
    if not (settings.spark_home / "jars").is_dir():
        raise ClusterError(f"no Spark jars under {settings.spark_home}; reinstall pyspark")
    java_home = os.environ.get("JAVA_HOME")
    java = Path(java_home) / "bin" / "java" if java_home else None
    if (java is not None and not java.exists()) or (java is None and shutil.which("java") is None):
        raise ClusterError("java not found; install a JDK 17 or set JAVA_HOME")


def failure(settings: ClusterSettings, daemon: Daemon, what: str) -> ClusterError:
    """An error that names the log and shows its tail."""
    return ClusterError(
        f"{daemon.name} {what}; log {daemon.log_path}, last lines:\n{tail(daemon.log_path)}\n"
        f"(master UI {settings.master_json_url})"
    )


def up(settings: ClusterSettings) -> dict[str, Any]:
    """Start whatever of master and workers is not running, then wait until every worker is ALIVE."""
    with cluster_lock(settings):
        daemons = settings.daemons()
        running = {d.name: running_pid(d) for d in daemons}
        if any(running.values()) and settings.settings_path.exists():
            started_with = settings.settings_path.read_text(encoding="utf-8")
            if started_with != settings.as_json():
                raise ClusterError(
                    f"the running cluster was started with other settings ({settings.settings_path}: "
                    f"{started_with}); run `python -m devstack.cluster down` first to apply the new ones"
                )
        to_start = [d for d in daemons if running[d.name] is None]
        if not to_start:
            log.info("the Spark cluster is already running")
        else:
            check_prerequisites(settings)
            for daemon in to_start:
                daemon.pid_path.unlink(missing_ok=True)  # stale, if any: that process is gone
                for kind, port in daemon.ports:
                    if is_port_taken(settings.host, port):
                        raise ClusterError(
                            f"{daemon.name} {kind} {port} on {settings.host} is already in use by another "
                            "process; stop it or choose other ports (FLO_STACK_SPARK_MASTER_PORT, "
                            "FLO_STACK_SPARK_MASTER_WEBUI_PORT, FLO_STACK_SPARK_WORKER_WEBUI_PORT)"
                        )
        settings.settings_path.write_text(settings.as_json(), encoding="utf-8")
        started: list[tuple[Daemon, int]] = []
        try:
            for daemon in to_start:
                started.append((daemon, start_daemon(settings, daemon)))
                if daemon.main_class == MASTER_CLASS:
                    # Workers retry registration anyway, but a master that fails is reported first.
                    wait_for(settings, started, is_master_alive)
            pids = {**{d.name: p for d, p in started}, **{n: p for n, p in running.items() if p}}
            return wait_for(settings, [(d, pids[d.name]) for d in daemons], lambda s: is_ready(settings, s))
        except ClusterError:
            # Stopped rather than left half-started, so a failed `up` never leaves processes holding ports.
            for daemon, pid in reversed(started):
                if is_java_main(pid, daemon.main_class) or is_group_alive(pid):
                    stop_daemon(daemon, pid, settings.stop_timeout_s)
            if not any(running_pid(d) for d in daemons):
                settings.settings_path.unlink(missing_ok=True)
            raise


def wait_for(
    settings: ClusterSettings,
    watched: Sequence[tuple[Daemon, int]],
    done: Callable[[Mapping[str, Any] | None], bool],
) -> dict[str, Any]:
    """Poll the master's JSON until `done(state)`; a daemon that dies or a timeout is reported."""
    deadline = time.monotonic() + settings.start_timeout_s
    while True:
        for daemon, pid in watched:
            if pid and not is_java_main(pid, daemon.main_class):
                daemon.pid_path.unlink(missing_ok=True)
                raise failure(settings, daemon, f"(pid {pid}) exited during start-up")
        state = master_state(settings)
        if done(state):
            return dict(state or {})
        if time.monotonic() >= deadline:
            alive = len(alive_workers(state))
            culprit = watched[0][0] if state is None else watched[-1][0]
            raise failure(
                settings,
                culprit,
                f"did not come up within {settings.start_timeout_s:.0f} s "
                f"(master {'answering' if state else 'not answering'}, {alive}/{settings.workers} workers "
                "ALIVE); the daemons this call started were stopped",
            )
        time.sleep(0.5)


def started_daemons(settings: ClusterSettings) -> list[Daemon]:
    """The configured daemons plus workers a start with a larger FLO_STACK_SPARK_WORKERS left behind."""
    daemons = settings.daemons()
    known = {d.name for d in daemons}
    for pid_path in sorted(settings.spark_dir.glob("worker*/worker*.pid")):
        if pid_path.stem not in known:
            folder = pid_path.parent
            daemons.append(Daemon(name=pid_path.stem, main_class=WORKER_CLASS, args=(), ports=(), folder=folder))
    return daemons


def down(settings: ClusterSettings) -> list[str]:
    """Stop the workers, then the master; the names of those that were running."""
    with cluster_lock(settings):
        stopped = []
        for daemon in reversed(started_daemons(settings)):
            pid = read_pid(daemon.pid_path)
            if pid is not None and (is_java_main(pid, daemon.main_class) or is_group_alive(pid)):
                stop_daemon(daemon, pid, settings.stop_timeout_s)
                stopped.append(daemon.name)
            else:
                daemon.pid_path.unlink(missing_ok=True)
        settings.settings_path.unlink(missing_ok=True)
        return stopped


@dataclass(frozen=True, kw_only=True)
class ClusterStatus:
    """What `status` reports; is_running means every daemon is alive and the master sees the workers."""

    pids: Mapping[str, int | None]
    master: Mapping[str, Any] | None
    is_running: bool


def status(settings: ClusterSettings) -> ClusterStatus:
    """Probe the pid files, the processes and the master's JSON."""
    pids = {d.name: running_pid(d) for d in settings.daemons()}
    state = master_state(settings)
    return ClusterStatus(pids=pids, master=state, is_running=all(pids.values()) and is_ready(settings, state))


def describe(settings: ClusterSettings, state: ClusterStatus) -> str:
    """The human-readable status report."""
    master = state.master or {}
    if state.is_running:
        lines = [f"Spark cluster: running, master {master.get('url', settings.master_url)}"]
    elif any(state.pids.values()) or state.master:
        lines = [f"Spark cluster: partly up (master {settings.master_url})"]
    elif any(is_port_taken(settings.host, p) for d in settings.daemons() for _, p in d.ports):
        lines = ["Spark cluster: not running (a port of it is held by a process this cluster did not start)"]
    else:
        lines = ["Spark cluster: not running"]
    lines.append(f"master UI: {settings.master_json_url.removesuffix('json/')}")
    for daemon in settings.daemons():
        pid = state.pids.get(daemon.name)
        lines.append(f"  {daemon.name:<8} {'pid ' + str(pid) if pid else 'not running':<12} log {daemon.log_path}")
    workers = master.get("workers", [])
    if workers:
        lines.append("workers (as the master sees them):")
        lines += [
            f"  {w.get('host')}:{w.get('port')}  {w.get('state')}  cores {w.get('coresused')}/{w.get('cores')}"
            f"  memory {w.get('memoryused')}/{w.get('memory')} MB  {w.get('webuiaddress')}"
            for w in workers
        ]
    if state.master is not None:
        apps = master.get("activeapps", [])
        lines.append("running apps:" if apps else "running apps: none")
        lines += [f"  {a.get('id')}  {a.get('name')}  cores {a.get('cores')}  {a.get('state')}" for a in apps]
        lines.append(f"completed apps: {len(master.get('completedapps', []))}")
    return "\n".join(lines)


# ---------------------------------------------------------------- submit


@dataclass(frozen=True, kw_only=True)
class SubmitSettings:
    """How one `flo-seg` command goes to the cluster; filled from flags and FLO_* in main()."""

    spark_home: Path
    master_url: str
    python: str
    jars_dir: Path
    dist_dir: Path
    source_dir: Path = SOURCE_DIR
    driver_host: str = "127.0.0.1"
    driver_memory: str | None = None
    executor_memory: str | None = None
    conf: tuple[tuple[str, str], ...] = ()
    spark_args: tuple[str, ...] = ()


def package_files(source_dir: Path) -> list[tuple[str, Path]]:
    """(name in the zip, file) for every module and package-data file of the project, sorted."""
    files = []
    for package in PACKAGES:
        root = source_dir / package
        if not (root / "__init__.py").exists():
            raise ClusterError(f"package {package} not found under {source_dir}")
        for path in sorted(root.rglob("*")):
            if path.is_file() and path.suffix in PACKAGE_FILE_SUFFIXES and "__pycache__" not in path.parts:
                files.append((path.relative_to(source_dir).as_posix(), path))
    return sorted(files)


def build_artifact(source_dir: Path, dist_dir: Path) -> Path:
    """The project as a content-addressed zip for --py-files (reused when the sources did not change)."""
    files = package_files(source_dir)
    digest = hashlib.sha256()
    for name, path in files:
        digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    artifact = dist_dir / f"flo_seg-{digest.hexdigest()[:12]}.zip"
    if artifact.exists():
        return artifact
    dist_dir.mkdir(parents=True, exist_ok=True)
    tmp = artifact.with_name(f".{artifact.name}.{os.getpid()}.tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, path in files:
            info = zipfile.ZipInfo(name, date_time=ZIP_DATE_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, path.read_bytes())
    tmp.replace(artifact)
    log.info("built %s (%d files)", artifact, len(files))
    return artifact


def write_launcher(dist_dir: Path) -> Path:
    """spark-submit needs a .py primary resource; this one only calls `flo_seg.cli.main`."""
    dist_dir.mkdir(parents=True, exist_ok=True)
    launcher = dist_dir / "flo_seg_launcher.py"
    if not launcher.exists() or launcher.read_text(encoding="utf-8") != LAUNCHER:
        tmp = launcher.with_name(f".{launcher.name}.{os.getpid()}.tmp")
        tmp.write_text(LAUNCHER, encoding="utf-8")
        tmp.replace(launcher)
    return launcher


def spark_jars(jars_dir: Path) -> list[str]:
    """The Delta and Kafka connector jars; missing ones are an error with the fix."""
    jars = sorted(str(p) for p in jars_dir.glob("*.jar"))
    if not jars:
        raise ClusterError(f"no jars in {jars_dir}; run `make setup` (or set FLO_SPARK_JARS_DIR)")
    return jars


def check_python(python: str) -> None:
    """The driver's and executors' interpreter must import the project's third-party deps."""
    code = f"import {', '.join(PYTHON_DEPS)}"
    try:
        result = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    except OSError as exc:
        raise ClusterError(f"python {python!r} cannot run: {exc}") from None
    if result.returncode != 0:
        raise ClusterError(
            f"python {python} lacks a dependency ({', '.join(PYTHON_DEPS)} needed): "
            f"{result.stderr.strip().splitlines()[-1] if result.stderr.strip() else 'unknown error'}; "
            "pass --python or FLO_STACK_CLUSTER_PYTHON"
        )


def submit_command(
    settings: SubmitSettings, artifact: Path, launcher: Path, jars: Sequence[str], argv: Sequence[str]
) -> list[str]:
    """The spark-submit command line: artifact, jars, interpreters, UTC JVMs, then the flo-seg args."""
    log4j = (settings.source_dir / "flo_seg" / "log4j2.properties").as_uri()
    conf = {
        "spark.pyspark.python": settings.python,
        "spark.pyspark.driver.python": settings.python,
        "spark.driver.host": settings.driver_host,
        "spark.driver.bindAddress": settings.driver_host,
        # The driver JVM is started by spark-submit, so build_session can no longer set these for it.
        "spark.driver.extraJavaOptions": f"-Duser.timezone=UTC -Dlog4j2.configurationFile={log4j}",
        "spark.executor.extraJavaOptions": "-Duser.timezone=UTC",
    }
    conf.update(dict(settings.conf))
    command = [str(settings.spark_home / "bin" / "spark-submit"), "--master", settings.master_url]
    command += ["--deploy-mode", "client", "--py-files", str(artifact), "--jars", ",".join(jars)]
    if settings.driver_memory:
        command += ["--driver-memory", settings.driver_memory]
    if settings.executor_memory:
        command += ["--executor-memory", settings.executor_memory]
    for key, value in conf.items():
        command += ["--conf", f"{key}={value}"]
    return [*command, *settings.spark_args, str(launcher), *argv]


def master_answers(master_url: str, timeout_s: float = 3.0) -> bool:
    """A TCP check of a spark:// master (other masters, e.g. local[2], are not probed)."""
    if not master_url.startswith("spark://"):
        return True
    for address in master_url.removeprefix("spark://").split(","):
        host, _, port = address.rpartition(":")
        try:
            with socket.create_connection((host, int(port)), timeout=timeout_s):
                return True
        except (OSError, ValueError):
            continue
    return False


def submit(settings: SubmitSettings, argv: Sequence[str]) -> int:
    """Run one flo-seg command on the cluster through spark-submit; its exit code."""
    if not argv:
        raise ClusterError("nothing to submit: give the flo-seg arguments after `--`, e.g. -- train --history X")
    if not master_answers(settings.master_url):
        raise ClusterError(
            f"no Spark master answers at {settings.master_url}; run `make cluster-up` "
            "(or set FLO_STACK_SPARK_CLUSTER_URL / --master)"
        )
    jars = spark_jars(settings.jars_dir)
    check_python(settings.python)
    artifact = build_artifact(settings.source_dir, settings.dist_dir)
    launcher = write_launcher(settings.dist_dir)
    command = submit_command(settings, artifact, launcher, jars, argv)
    env = dict(os.environ, SPARK_HOME=str(settings.spark_home), PYSPARK_PYTHON=settings.python)
    env.pop("PYSPARK_DRIVER_PYTHON", None)  # spark.pyspark.driver.python decides, not a stray variable
    log.info("submitting to %s: flo-seg %s", settings.master_url, " ".join(argv))
    log.debug("%s", command)
    return subprocess.run(command, env=env, check=False).returncode


# ---------------------------------------------------------------- CLI


def cluster_settings_from(args: argparse.Namespace, env: Mapping[str, str]) -> ClusterSettings:
    """CLI flags win over FLO_* variables, which win over the defaults."""
    master_port = args.master_port or env_int(env, "FLO_STACK_SPARK_MASTER_PORT", 7077, ClusterError)
    webui_port = args.master_webui_port or env_int(env, "FLO_STACK_SPARK_MASTER_WEBUI_PORT", 8080, ClusterError)
    worker_webui = args.worker_webui_port or env_int(
        env, "FLO_STACK_SPARK_WORKER_WEBUI_PORT", webui_port + 1, ClusterError
    )
    workers = args.workers or env_int(env, "FLO_STACK_SPARK_WORKERS", 2, ClusterError)
    ports = [master_port, webui_port, *range(worker_webui, worker_webui + workers)]
    if len(set(ports)) != len(ports):
        raise ClusterError(f"the cluster's ports must all differ: {ports}")
    return ClusterSettings(
        spark_home=Path(env.get("FLO_STACK_SPARK_HOME") or pyspark_home()),
        state_dir=Path(args.state_dir or env.get("FLO_STACK_DIR") or SOURCE_DIR / ".stack"),
        host=env.get("FLO_STACK_SPARK_HOST") or "127.0.0.1",
        master_port=master_port,
        master_webui_port=webui_port,
        worker_webui_port=worker_webui,
        workers=workers,
        worker_cores=env_int(env, "FLO_STACK_SPARK_WORKER_CORES", 1, ClusterError),
        worker_memory=env.get("FLO_STACK_SPARK_WORKER_MEMORY") or "2g",
        daemon_memory=env.get("FLO_STACK_SPARK_DAEMON_MEMORY") or "512m",
        start_timeout_s=args.timeout,
    )


def submit_settings_from(args: argparse.Namespace, env: Mapping[str, str], cluster: ClusterSettings) -> SubmitSettings:
    """The cluster this module runs is the default master; FLO_STACK_SPARK_CLUSTER_URL or --master another."""
    conf = []
    for pair in args.conf:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ClusterError(f"--conf {pair!r} is not KEY=VALUE")
        conf.append((key, value))
    return SubmitSettings(
        spark_home=cluster.spark_home,
        master_url=args.master or env.get("FLO_STACK_SPARK_CLUSTER_URL") or cluster.master_url,
        python=args.python or env.get("FLO_STACK_CLUSTER_PYTHON") or sys.executable,
        jars_dir=Path(env.get("FLO_SPARK_JARS_DIR") or SOURCE_DIR / ".jars" / "spark"),
        dist_dir=cluster.spark_dir / "dist",
        driver_host=cluster.host,
        driver_memory=env.get("FLO_SPARK_DRIVER_MEMORY") or None,
        executor_memory=env.get("FLO_SPARK_EXECUTOR_MEMORY") or None,
        conf=tuple(conf),
        spark_args=tuple(args.spark_arg),
    )


def build_parser() -> argparse.ArgumentParser:
    """One sub-command per verb; the cluster's location and ports are shared."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--state-dir", help="pid files, logs, work dirs, artifact (env FLO_STACK_DIR, default <repo>/.stack)"
    )
    common.add_argument("--master-port", type=int, help="master port (env FLO_STACK_SPARK_MASTER_PORT, default 7077)")
    common.add_argument(
        "--master-webui-port", type=int, help="master web UI (env FLO_STACK_SPARK_MASTER_WEBUI_PORT, default 8080)"
    )
    common.add_argument(
        "--worker-webui-port",
        type=int,
        help="first worker's web UI, the next +1 (env FLO_STACK_SPARK_WORKER_WEBUI_PORT, default master UI + 1)",
    )
    common.add_argument("--workers", type=int, help="number of workers (env FLO_STACK_SPARK_WORKERS, default 2)")
    common.add_argument("--timeout", type=float, default=90.0, help="seconds to wait for the cluster (default 90)")
    common.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser = argparse.ArgumentParser(
        prog="python -m devstack.cluster",
        description="A local Spark standalone cluster (master + one-core workers) and flo-seg jobs on it.",
        epilog="example: python -m devstack.cluster submit -- --lake /tmp/lake train --history data.csv",
    )
    verbs = parser.add_subparsers(dest="command", required=True, metavar="{up,down,status,submit}")
    verbs.add_parser("up", parents=[common], help="start master and workers (idempotent), wait for them")
    verbs.add_parser("down", parents=[common], help="stop workers and master (idempotent)")
    verbs.add_parser("status", parents=[common], help="master URL, workers, apps, logs; exit 0 running, 3 not")
    sub = verbs.add_parser(
        "submit", parents=[common], help="run `flo-seg ARGS` on the cluster: submit [options] -- ARGS"
    )
    sub.add_argument("--master", help="master URL (env FLO_STACK_SPARK_CLUSTER_URL, default this cluster's)")
    sub.add_argument(
        "--python", help="driver and executor interpreter (env FLO_STACK_CLUSTER_PYTHON, default this python)"
    )
    sub.add_argument("--conf", action="append", default=[], metavar="KEY=VALUE", help="extra Spark conf (repeatable)")
    sub.add_argument(
        "--spark-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra spark-submit argument, e.g. --spark-arg=--archives --spark-arg=env.tar.gz#env",
    )
    sub.add_argument("flo_seg_args", nargs=argparse.REMAINDER, help="-- then the flo-seg arguments")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one verb and map failures to exit codes (0 ok, 1 failed, 3 status: not running)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    try:
        settings = cluster_settings_from(args, os.environ)
        if args.command == "up":
            state = up(settings)
            print(f"Spark cluster is up: master {settings.master_url}, UI {settings.master_json_url}")
            print(f"workers ALIVE: {len(alive_workers(state))}; logs under {settings.spark_dir}")
            return EXIT_OK
        if args.command == "down":
            stopped = down(settings)
            print(f"Spark cluster stopped ({', '.join(stopped)})" if stopped else "Spark cluster was not running")
            return EXIT_OK
        if args.command == "status":
            state_ = status(settings)
            print(describe(settings, state_))
            return EXIT_OK if state_.is_running else EXIT_NOT_RUNNING
        rest = list(args.flo_seg_args)
        if rest[:1] == ["--"]:
            rest = rest[1:]
        return submit(submit_settings_from(args, os.environ, settings), rest)
    except ClusterError as exc:
        log.error("error: %s", exc)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
