"""The driver's class archive: passed to a driver this process starts, never in the way when it does not fit."""

from __future__ import annotations

import shlex
import subprocess
import sys
import textwrap
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest
from pyspark.sql import SparkSession

from flo_seg.settings import SparkSettings
from flo_seg.spark import DRIVER_JAVA_OPTIONS, class_archive_options, session_conf

DRIVER = "spark.driver.extraJavaOptions"


def _settings(archive: Path | None) -> SparkSettings:
    return replace(SparkSettings(), class_archive=archive, jars_dir=None)


def test_a_driver_this_process_starts_gets_the_archive(tmp_path: Path) -> None:
    archive = tmp_path / "driver classes.jsa"
    archive.write_bytes(b"not read here")
    options = session_conf(_settings(archive), submitted={})[DRIVER]
    assert options.startswith(DRIVER_JAVA_OPTIONS)
    assert f"-XX:SharedArchiveFile='{archive}'" in options  # quoted: Spark splits the options like a shell
    assert "-Xshare:auto" in options


def test_no_archive_without_the_file_or_under_spark_submit(tmp_path: Path) -> None:
    assert session_conf(_settings(tmp_path / "absent.jsa"), submitted={})[DRIVER] == DRIVER_JAVA_OPTIONS
    assert session_conf(_settings(None), submitted={})[DRIVER] == DRIVER_JAVA_OPTIONS
    archive = tmp_path / "driver.jsa"
    archive.write_bytes(b"x")
    # spark-submit started the JVM already: its options are what they are.
    submitted = session_conf(_settings(archive), submitted={"spark.master": "spark://host:7077"})
    assert "SharedArchiveFile" not in submitted.get(DRIVER, "")


def _read_a_delta_table(archive: Path, table: Path, xshare: str | None = None) -> subprocess.CompletedProcess[str]:
    """A fresh Python and driver JVM (built by the session factory, with `archive`) that counts a Delta table."""
    extra = f", extra_conf={{'{DRIVER}': session_conf(settings, {{}})['{DRIVER}'] + ' {xshare}'}}" if xshare else ""
    script = textwrap.dedent(
        f"""
        from dataclasses import replace
        from pathlib import Path
        from flo_seg.settings import default_spark_settings
        from flo_seg.spark import build_session, session_conf
        settings = replace(default_spark_settings("class-archive-test"), master="local[1]", class_archive=Path({str(archive)!r}))
        spark = build_session(settings{extra})
        print("rows", spark.read.format("delta").load({str(table)!r}).count())
        """
    )
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False)


def _archive_of_another_class_path(folder: Path) -> Path:
    """A real archive, written by this JVM for a program on another class path: one that does not fit."""
    (folder / "Hello.java").write_text("public class Hello { public static void main(String[] a) { } }\n")
    subprocess.run(["javac", "-d", str(folder), str(folder / "Hello.java")], check=True)
    with zipfile.ZipFile(folder / "hello.jar", "w") as jar:
        jar.write(folder / "Hello.class", "Hello.class")
    archive = folder / "stale.jsa"
    command = ["java", "-cp", str(folder / "hello.jar"), f"-XX:ArchiveClassesAtExit={archive}", "Hello"]
    subprocess.run(command, check=True, capture_output=True)
    # Without the factory's quiet flags such a JVM says "Unable to use shared archive" on every start.
    noisy = subprocess.run(
        ["java", "-cp", str(folder), f"-XX:SharedArchiveFile={archive}", "-version"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "Unable to use shared archive" in noisy.stdout  # the JVM's own log goes to stdout
    return archive


@pytest.fixture(scope="module")
def delta_table(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> Path:
    table = tmp_path_factory.mktemp("archive") / "table"
    spark.range(5).write.format("delta").save(str(table))
    return table


def test_the_factorys_flags_keep_a_jvm_quiet_about_an_archive_that_does_not_fit(tmp_path: Path) -> None:
    # What a JDK upgrade or new Spark jars leave behind: the JVM starts, and says nothing of it.
    stale = _archive_of_another_class_path(tmp_path)
    flags = shlex.split(class_archive_options(stale))
    done = subprocess.run(["java", "-cp", str(tmp_path), *flags, "-version"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    said = (done.stdout + done.stderr).lower()
    assert "openjdk" in said and "archive" not in said and "cds" not in said, said


@pytest.mark.integration
def test_a_command_runs_and_says_nothing_with_an_archive_that_does_not_fit(delta_table: Path, tmp_path: Path) -> None:
    stale = _archive_of_another_class_path(tmp_path)
    done = _read_a_delta_table(stale, delta_table)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "rows 5" in done.stdout
    said = (done.stdout + done.stderr).lower()
    assert "archive" not in said and "cds" not in said, said[-2000:]


@pytest.mark.integration
def test_the_written_archive_fits_the_drivers_the_factory_starts(delta_table: Path, tmp_path: Path) -> None:
    # -Xshare:on makes a JVM refuse to start when it cannot map the archive: so it fits, and is used.
    archive = tmp_path / "driver-classes.jsa"
    done = subprocess.run(
        [sys.executable, "-m", "flo_seg.class_archive", str(archive)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert archive.is_file() and not archive.with_name(archive.name + ".partial").exists()
    used = _read_a_delta_table(archive, delta_table, xshare="-Xshare:on -Xlog:cds=warning")
    assert used.returncode == 0, used.stderr[-2000:]
    assert "rows 5" in used.stdout
