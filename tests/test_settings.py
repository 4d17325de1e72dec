"""One settings tree: defaults < TOML file < FLO_* variables < flags, each value checked once, `flo-seg config`."""

from __future__ import annotations

import ast
import json
import os
from pathlib import Path

import pytest

from flo_seg import cli
from flo_seg.settings import (
    LakeSettings,
    Settings,
    Source,
    StreamOptions,
    TrainSettings,
    interval_seconds,
    kafka_client_options,
    leaves,
    load_settings,
)
from streaming.job import StreamSettings
from streaming.produce import ProduceSettings

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def no_flo_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """`make test` exports FLO_LAKE and others; these tests set their own."""
    for name in list(os.environ):
        if name.startswith("FLO_"):
            monkeypatch.delenv(name)


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "flo.toml"
    path.write_text(text)
    return path


def test_each_layer_overrides_the_one_below(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        'lake = "/from-file"\n[train]\nk_min = 5\nk_max = 7\nseed = 1\n[spark]\nmaster = "local[1]"\n',
    )
    loaded = load_settings(
        {"train.seed": 3},
        config_file=config,
        environ={"FLO_TRAIN_K_MAX": "6", "FLO_TRAIN_SEED": "2", "FLO_SPARK_MASTER": ""},
        flag_names={"train.seed": "--seed"},
    )
    s = loaded.settings
    assert (s.lake, s.spark.master, s.train.k_min, s.train.k_max, s.train.seed) == ("/from-file", "local[1]", 5, 6, 3)
    assert s.train.k_max == 6 and isinstance(s.train.k_max, int)  # a variable's text is typed by the tree
    assert loaded.sources["lake"] == Source("file", str(config))
    assert loaded.sources["spark.master"] == Source("file", str(config))  # an empty variable counts as unset
    assert loaded.sources["train.k_max"] == Source("env", "FLO_TRAIN_K_MAX")
    assert loaded.sources["train.seed"] == Source("flag", "--seed")
    assert loaded.sources["train.restarts"] == Source("default")
    assert s.train.restarts == TrainSettings().restarts


def test_the_file_can_also_come_from_flo_config(tmp_path: Path) -> None:
    config = write_config(tmp_path, "[stream]\naging_days = 3\n")
    loaded = load_settings(environ={"FLO_CONFIG": str(config)})
    assert loaded.settings.stream.aging_days == 3
    assert loaded.config_file == config


@pytest.mark.parametrize(
    ("environ", "file_text", "message"),
    [
        (
            {"FLO_SPARK_MASTR": "local[2]"},
            "",
            "spark.mastr (env FLO_SPARK_MASTR): no such setting (spark has app_name, master, jars_dir,",
        ),
        ({}, "[stream]\nagin_days = 3\n", "stream.agin_days (file "),
        ({"FLO_STREAM_DEDUPE_WINDOW": "3 weeks"}, "", "expected a duration like '24 hours'"),
        ({"FLO_STREAM_COMPACT_SECONDS": "inf"}, "", "stream.compact_seconds (env FLO_STREAM_COMPACT_SECONDS): must be"),
        ({"FLO_TRAIN_K_MIN": "9"}, "", "train (env FLO_TRAIN_K_MIN): need k_min <= k_max, got 9..8"),
        ({}, "[produce]\nlate_share = 1.5\n", "produce.late_share (file "),
        ({"FLO_JARS_DIR": "/j"}, "", "renamed variables: FLO_JARS_DIR is now FLO_SPARK_JARS_DIR"),
        ({}, "[train\n", "is not valid TOML"),
    ],
)
def test_a_bad_value_names_the_setting_and_where_it_was_given(
    tmp_path: Path, environ: dict[str, str], file_text: str, message: str
) -> None:
    config = write_config(tmp_path, file_text) if file_text else None
    with pytest.raises(ValueError) as refused:
        load_settings(config_file=config, environ=environ)
    assert message in str(refused.value)


def test_variables_of_other_tools_are_not_settings() -> None:
    environ = {"FLO_STACK_KAFKA_PORT": "9092", "FLO_REQUIRE_KAFKA": "1", "FLO_FAULT_AFTER_LOGS": "3"}
    assert load_settings(environ=environ).settings == Settings()


def test_a_missing_config_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"config file .*missing\.toml does not exist"):
        load_settings(config_file=tmp_path / "missing.toml", environ={})


def test_the_sections_are_the_objects_the_jobs_take() -> None:
    """The stream's and producer's settings extend the tree's sections: their defaults are the tree's."""
    stream = StreamSettings(bootstrap_servers="b:9092", checkpoint="/c")
    assert (stream.aging_days, stream.dedupe_window, stream.compaction) == (7, "24 hours", "auto")
    assert stream.topic == Settings().kafka.orders_topic
    assert ProduceSettings().event_seconds == Settings().produce.event_seconds
    with pytest.raises(ValueError, match="aging_days"):
        StreamSettings(bootstrap_servers="b:9092", checkpoint="/c", aging_days=0)
    with pytest.raises(ValueError, match="no_such_knob"):
        StreamOptions(no_such_knob=1)  # type: ignore[call-arg]


def test_kafka_options_merge_file_then_flags(tmp_path: Path) -> None:
    props = tmp_path / "client.properties"
    props.write_text("# TLS\nsecurity.protocol=SSL\nkafka.ssl.cafile = /ca.pem\nsasl.mechanism=PLAIN\n")
    config = write_config(tmp_path, f'[kafka]\noptions_file = "{props}"\noptions = {{ "sasl.mechanism" = "SCRAM" }}\n')
    loaded = load_settings({"kafka.options": {"request.timeout.ms": "5000"}}, config_file=config, environ={})
    assert kafka_client_options(loaded.settings.kafka) == {
        "security.protocol": "SSL",
        "ssl.cafile": "/ca.pem",
        "sasl.mechanism": "SCRAM",  # the file's `options` win over the properties file
        "request.timeout.ms": "5000",  # a flag adds to the file's options instead of replacing them
    }


def test_a_flag_not_given_leaves_the_variable_standing(
    no_flo_env: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """argparse defaults would overwrite FLO_* values; a setting's flag is only in the namespace when given."""
    monkeypatch.setenv("FLO_STREAM_AGING_DAYS", "3")
    monkeypatch.setenv("FLO_TRAIN_K_MAX", "6")
    assert cli.main(["config", "--format", "json", "--lake", "/l"]) == 0
    shown = json.loads(capsys.readouterr().out)["settings"]
    assert shown["stream.aging_days"] == {"value": 3, "from": "env FLO_STREAM_AGING_DAYS"}
    assert shown["train.k_max"] == {"value": 6, "from": "env FLO_TRAIN_K_MAX"}
    assert shown["lake"] == {"value": "/l", "from": "flag --lake"}
    assert shown["train.k_min"] == {"value": 4, "from": "default"}


def test_config_prints_every_setting_with_its_source_and_hides_secrets(
    no_flo_env: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(
        tmp_path,
        '[kafka]\noptions = { "sasl.jaas.config" = "PlainLoginModule password=\\"hunter2\\"", '
        '"security.protocol" = "SASL_SSL" }\n',
    )
    monkeypatch.setenv("FLO_SPARK_MASTER", "spark://m:7077")
    monkeypatch.setenv("FLO_LAEK", "/typo")
    assert cli.main(["--config", str(config), "config"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines()[1:] if line.startswith("  ")}
    assert set(lines) == {key for key, _ in leaves(Settings())}
    assert lines["spark.master"].split()[1:] == ["spark://m:7077", "env", "FLO_SPARK_MASTER"]
    assert lines["train.k_min"].split()[1:] == ["4", "default"]
    assert lines["kafka.options"].endswith(f"file {config}")
    assert "hunter2" not in out and '"sasl.jaas.config": "****"' in out and '"SASL_SSL"' in out
    assert out.splitlines()[0] == f"config file: {config}"
    assert "FLO_CONFIG" not in os.environ  # a command leaves the process's environment as it found it
    assert out.splitlines()[-1] == "FLO_* variables that set nothing here: FLO_LAEK"


def test_a_refused_setting_stops_the_command_before_any_work(
    no_flo_env: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FLO_TRAIN_ALGORITHM", "kmean")
    assert cli.main(["--lake", str(tmp_path / "lake"), "train", "--history", str(tmp_path / "h.csv")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("flo-seg train: error: train.algorithm (env FLO_TRAIN_ALGORITHM): Input should be 'kmeans'")
    assert not (tmp_path / "lake").exists()


def test_help_shows_the_trees_default_and_variable(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["stream", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default 24 hours; FLO_STREAM_DEDUPE_WINDOW)" in text
    assert "(default flo.orders; FLO_KAFKA_ORDERS_TOPIC)" in text
    assert "(default 127.0.0.1:9092; FLO_KAFKA_BOOTSTRAP_SERVERS)" in text


def test_nothing_below_the_cli_reads_the_environment() -> None:
    """batch/, streaming/ and schemas/ take settings as arguments; the one use of os.environ there hands
    the stream's own environment to its compaction child."""
    users = set()
    for path in sorted([*REPO.glob("batch/*.py"), *REPO.glob("streaming/*.py"), *REPO.glob("schemas/*.py")]):
        for scope in ast.walk(ast.parse(path.read_text())):
            if isinstance(scope, ast.FunctionDef) and any(
                isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv") for node in ast.walk(scope)
            ):
                users.add((str(path.relative_to(REPO)), scope.name))
    assert users == {("streaming/run.py", "__init__")}


def test_the_compaction_child_gets_the_streams_config_file(monkeypatch: pytest.MonkeyPatch) -> None:
    """The child inherits the FLO_* variables; a --config flag has to be handed on explicitly."""
    import streaming.run as run

    started: list[list[str]] = []

    class FakePopen:
        def __init__(self, command: list[str], env: dict[str, str]) -> None:
            started.append(command)
            self.pid = 4242

    monkeypatch.setattr(run.subprocess, "Popen", FakePopen)
    run.CompactionProcess(None, LakeSettings(root="/lake"), 5.0, child_flags=("--config", "/etc/flo.toml"))  # type: ignore[arg-type]
    command = started[0]
    assert command[command.index("flo_seg.cli") + 1 :][:5] == [
        "--config",
        "/etc/flo.toml",
        "--lake",
        "/lake",
        "compact",
    ]


@pytest.mark.parametrize(
    ("text", "seconds"), [("24 hours", 86_400), ("1 hour", 3_600), (" 30 Minutes ", 1_800), ("2 days", 172_800)]
)
def test_a_dedupe_window_reads_in_seconds(text: str, seconds: int) -> None:
    assert interval_seconds(text) == seconds
