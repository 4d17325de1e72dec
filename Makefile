# FLO real-time customer segmentation. `make` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON      ?= python3
VENV        := .venv
BIN         := $(VENV)/bin
JARS        := .jars
MVN         := mvn -B -q -s jvm/settings.xml
SPARK_JARS  := delta-spark_4.2_2.13,delta-storage,delta-kernel-api,delta-kernel-defaults,delta-kernel-unitycatalog,unitycatalog-client,unitycatalog-hadoop,jackson-datatype-jdk8,spark-sql-kafka-0-10_2.13,spark-token-provider-kafka-0-10_2.13,kafka-clients,commons-pool2

export FLO_LAKE       ?= $(CURDIR)/lake
export FLO_SPARK_JARS_DIR   ?= $(CURDIR)/$(JARS)/spark
export FLO_STACK_KAFKA_JARS ?= $(CURDIR)/$(JARS)/kafka
export FLO_STACK_KAFKA_PORT ?= 9092
export FLO_KAFKA_BOOTSTRAP_SERVERS ?= 127.0.0.1:$(FLO_STACK_KAFKA_PORT)


.PHONY: help
help: ## List every target
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  \033[1m%-16s\033[0m %s\n", $$1, $$2}'

# ---------------------------------------------------------------- set-up
# uv installs the same requirements as pip, faster from its cache: a new venv took 29-33 s against pip's
# 41-52 s (two alternating runs each, warm caches, 2026-12-06), which every fresh clone and CI run pays.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check 'uv>=0.9,<1'
	VIRTUAL_ENV=$(CURDIR)/$(VENV) $(BIN)/uv pip install -q -e '.[dev]'
	@# devstack/ and benchmarks/ are not installed (they are not the product): the venv sees the checkout.
	$(BIN)/python -c 'import pathlib, site; pathlib.Path(site.getsitepackages()[0], "flo-seg-checkout.pth").write_text("$(CURDIR)\n")'
	touch $@

$(JARS)/spark/.resolved: jvm/spark/pom.xml jvm/settings.xml
	@echo "resolving Spark runtime jars (Delta, Kafka connector) into $(JARS)/spark"
	rm -rf $(JARS)/spark && mkdir -p $(JARS)/spark
	$(MVN) -f jvm/spark/pom.xml dependency:copy-dependencies -DoutputDirectory=$(CURDIR)/$(JARS)/spark \
	  -DincludeArtifactIds=$(SPARK_JARS)
	touch $@

$(JARS)/kafka/.resolved: jvm/kafka/pom.xml jvm/settings.xml
	@echo "resolving the Apache Kafka broker into $(JARS)/kafka"
	rm -rf $(JARS)/kafka && mkdir -p $(JARS)/kafka
	$(MVN) -f jvm/kafka/pom.xml dependency:copy-dependencies -DoutputDirectory=$(CURDIR)/$(JARS)/kafka \
	  -DincludeScope=runtime
	touch $@

# The stream's per-customer state step (jvm/state), built against the Spark that pyspark pins; it lands
# beside the resolved jars so the session factory and spark-submit pick it up with them.
STATE_JAR := $(JARS)/spark/flo-seg-state.jar
$(STATE_JAR): $(JARS)/spark/.resolved jvm/state/pom.xml $(shell find jvm/state/src -name '*.java')
	@echo "building the stream's state step into $@"
	$(MVN) -f jvm/state/pom.xml package
	cp jvm/state/target/flo-seg-state.jar $@

.PHONY: setup
setup: $(VENV)/.installed $(JARS)/spark/.resolved $(STATE_JAR) $(JARS)/kafka/.resolved ## Create .venv, install the project and resolve the JVM jars (idempotent)

# The driver JVM's class archive (flo_seg/class_archive.py): every Spark driver the product starts maps
# its classes from it, about 3 s sooner to its first Delta read on this machine (docs/benchmarks.md,
# "Driver start-up"). Writing it takes ~45 s, so `make demo` builds it and `make test` does not: the
# tests start one driver. Rewritten when the Python packages or the Spark jars change.
CLASS_ARCHIVE := $(JARS)/driver-classes.jsa
$(CLASS_ARCHIVE): $(VENV)/.installed $(JARS)/spark/.resolved $(STATE_JAR) flo_seg/class_archive.py
	@echo "writing the driver JVM's class archive into $@ (faster Spark start-up)"
	$(BIN)/python -m flo_seg.class_archive $(CURDIR)/$@

.PHONY: class-archive
class-archive: $(CLASS_ARCHIVE) ## Write the driver JVM's class archive: each flo-seg command's Spark starts ~3 s sooner

# ---------------------------------------------------------------- quality
.PHONY: lint
lint: setup ## ruff + mypy
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

.PHONY: fmt
fmt: setup ## Format the code with ruff
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# docker-compose (Debian's v1 package) validates docker/compose.yaml; no Docker engine is installed or needed.
.PHONY: docker-tools
docker-tools:
	@command -v docker-compose >/dev/null || { \
	  echo "installing Debian's docker-compose (for the static compose check)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker-compose >/dev/null; }

# Debian's Chromium renders the dashboard headless in the tests (tests/test_dashboard.py).
.PHONY: browser
browser:
	@command -v chromium >/dev/null || { \
	  echo "installing Debian's chromium (headless, for the dashboard test)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; }

# Two tiers. `make test` (what CI runs): every unit, parity and end-to-end test, the whole stream over
# files (tests/test_stream_files.py) and the tests that need Kafka itself (the broker, produce, one stream
# run over the broker that publishes its changes, hostile events, aging, a re-score while streaming).
# `make test-integration`: the `integration` marker, the slow suite of process crashes (kill -9 at every
# step), hot reload while streaming, the checkpoint lease and the compaction child between processes,
# `flo-seg maintain` as a process, and the local Spark cluster. `make test-all` runs both in one go.
# Cluster-marked tests are integration tests by conftest.py. Timings: README and docs/benchmarks.md.
# $(1): the marker expression, $(2): 1 when the tests need the local Spark cluster. Starts the broker (and
# the cluster) when they are not running, and stops what it started.
define run_tests
	@kafka=0; cluster=0; \
	if ! $(BIN)/python -m devstack.stack status >/dev/null 2>&1; then \
	  $(BIN)/python -m devstack.stack up || exit 1; kafka=1; \
	fi; \
	if [ "$(2)" = 1 ] && ! $(BIN)/python -m devstack.cluster status >/dev/null 2>&1; then \
	  $(BIN)/python -m devstack.cluster up || { [ $$kafka = 1 ] && $(BIN)/python -m devstack.stack down; exit 1; }; cluster=1; \
	fi; \
	FLO_REQUIRE_KAFKA=1 FLO_REQUIRE_CLUSTER=$(2) FLO_REQUIRE_DOCKER_TOOLS=1 FLO_REQUIRE_BROWSER=1 \
	  $(BIN)/pytest -m "$(1)" $(PYTEST_ARGS); rc=$$?; \
	if [ $$cluster = 1 ]; then $(BIN)/python -m devstack.cluster down; fi; \
	if [ $$kafka = 1 ]; then $(BIN)/python -m devstack.stack down; fi; \
	exit $$rc
endef

.PHONY: test
test: setup docker-tools browser ## Run the tests CI runs (all but the integration suite); starts the Kafka broker they need, stops it after
	$(call run_tests,not integration,0)

.PHONY: test-integration
test-integration: setup ## Run the integration suite (kill -9 crashes, hot reload, lease, compaction child, cluster); starts the broker and the local Spark cluster
	$(call run_tests,integration,1)

.PHONY: test-all
test-all: setup docker-tools browser ## Run both tiers in one pytest run
	$(call run_tests,,1)

# ---------------------------------------------------------------- product
DEMO_ARGS ?=

DASHBOARD_LAKE ?= $(CURDIR)/demo/lake
DASHBOARD_ARGS ?=

.PHONY: dashboard
dashboard: setup ## The live dashboard over the demo's lake (DASHBOARD_LAKE=PATH for another) on http://127.0.0.1:8050/
	$(BIN)/flo-seg --lake $(DASHBOARD_LAKE) dashboard $(DASHBOARD_ARGS)

.PHONY: demo
demo: setup class-archive stack-up ## The whole product on built-in data: generate, train, stream + produce for a minute, report
	$(BIN)/python -m devstack.demo $(DEMO_ARGS)

.PHONY: clean
clean: ## Remove the lake, checkpoints, generated data and reports (keeps .venv and jars)
	rm -rf lake checkpoints data reports demo spark-warehouse

# ---------------------------------------------------------------- local Kafka stack
# One KRaft broker+controller as a plain Java process (no Docker); config, data, log and pid live in
# .stack/kafka (FLO_STACK_DIR), the port is FLO_STACK_KAFKA_PORT (default 9092). See devstack/stack.py.
# stack-down and stack-status need only the venv: re-resolving .jars/kafka (which first deletes it)
# under a running broker must not be the first step of stopping it.
.PHONY: stack-up
stack-up: $(VENV)/.installed $(JARS)/kafka/.resolved ## Start the local Kafka broker and create its topics (idempotent)
	$(BIN)/python -m devstack.stack up

.PHONY: stack-down
stack-down: $(VENV)/.installed ## Stop the local Kafka broker (idempotent)
	$(BIN)/python -m devstack.stack down

.PHONY: stack-status
stack-status: $(VENV)/.installed ## Show whether the local Kafka broker runs, its topics and log (exit 3 if not)
	$(BIN)/python -m devstack.stack status

# ---------------------------------------------------------------- docker (for users who have Docker)
# docker/compose.yaml: Kafka (KRaft), a Spark master + worker and the flo-seg jobs; see docker/README.md.
# `docker compose` (the plugin) when present, else the standalone `docker-compose`. docker-lint is the
# static check that needs no Docker engine: compose config, hadolint, consistency with this Makefile
# and the CLI (tests/test_docker_static.py).
DOCKER_COMPOSE ?= $(shell docker compose version >/dev/null 2>&1 && echo "docker compose" || echo docker-compose)
DOCKER_COMPOSE_FILE := docker/compose.yaml

.PHONY: docker-up
docker-up: ## Build the image and start Kafka, Spark and the flo-seg jobs in Docker (docker/README.md)
	$(DOCKER_COMPOSE) -f $(DOCKER_COMPOSE_FILE) up -d --build

.PHONY: docker-down
docker-down: ## Stop and remove the Docker services; keeps the lake and Kafka volumes unless VOLUMES=1
	$(DOCKER_COMPOSE) -f $(DOCKER_COMPOSE_FILE) down $(if $(filter 1,$(VOLUMES)),--volumes)

.PHONY: docker-lint
docker-lint: $(VENV)/.installed ## Static checks of docker/ (compose config, hadolint, flags, topics, jars); no engine needed
	FLO_REQUIRE_DOCKER_TOOLS=1 $(BIN)/pytest -q tests/test_docker_static.py

# ---------------------------------------------------------------- local Spark standalone cluster
# One master and two one-core workers as separate JVMs from the pyspark installation's spark-class, on
# 127.0.0.1; pid files, logs and work dirs live in .stack/spark (FLO_STACK_DIR), ports are
# FLO_STACK_SPARK_MASTER_PORT (7077), FLO_STACK_SPARK_MASTER_WEBUI_PORT (8080),
# FLO_STACK_SPARK_WORKER_WEBUI_PORT (8081+).
# cluster-submit ships the project as a zip (--py-files) and .jars/spark (--jars). See devstack/cluster.py.
.PHONY: cluster-up
cluster-up: $(VENV)/.installed ## Start the local Spark standalone master + 2 workers (idempotent)
	$(BIN)/python -m devstack.cluster up

.PHONY: cluster-down
cluster-down: $(VENV)/.installed ## Stop the local Spark cluster's workers and master (idempotent)
	$(BIN)/python -m devstack.cluster down

.PHONY: cluster-status
cluster-status: $(VENV)/.installed ## Show the Spark master URL, workers, apps and logs (exit 3 if not running)
	$(BIN)/python -m devstack.cluster status

.PHONY: cluster-submit
cluster-submit: $(VENV)/.installed $(JARS)/spark/.resolved ## Run flo-seg on the cluster: make cluster-submit ARGS="train --history data/history.csv"
	$(BIN)/python -m devstack.cluster submit -- $(ARGS)
