"""The deployment files parse and name only commands, ports, variables and metrics that exist.

No container engine runs here, so these tests check the files against the code:
the ``rankstream`` argument parser, the variables ``shared/settings.py`` reads,
the probe paths and the metric registry.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import tomllib
from pathlib import Path

import pytest
import yaml

from services.cli import build_parser
from shared.metrics import REGISTRY, SNAPSHOT, GroupInfo, MemoryInfo, RedisSnapshot
from shared.names import CONSUMER_GROUPS, Names
from shared.probes import PROBE_PATHS
from shared.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
SERVICES = {"ingest", "ranker", "persister", "gateway"}
# The port that serves each service's probes, as the deployment files set it.
PROBE_PORTS = {"ingest": 8000, "gateway": 8001, "ranker": 9100, "persister": 9100}


def cli_commands() -> set[str]:
    parser = build_parser()
    actions = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
    return set(actions[0].choices)


def settings_variables() -> set[str]:
    """Return every RANKSTREAM_* name that shared/settings.py reads."""
    source = (ROOT / "shared" / "settings.py").read_text()
    return set(re.findall(r'"(RANKSTREAM_[A-Z0-9_]+)"', source))


def rankstream_variables(names: list[str]) -> list[str]:
    return [name for name in names if name.startswith("RANKSTREAM_")]


def test_settings_variables_are_parsed() -> None:
    """The variable list the checks below rely on is not empty and includes the ports."""
    variables = settings_variables()
    assert {"RANKSTREAM_HTTP_PORT", "RANKSTREAM_WS_PORT", "RANKSTREAM_METRICS_PORT", "RANKSTREAM_REDIS_URL"} <= variables


def test_manifest_ports_match_settings_defaults() -> None:
    """The ports the deployment files use are the settings defaults or set explicitly."""
    defaults = Settings()
    assert defaults.http_port == PROBE_PORTS["ingest"]
    assert defaults.ws_port == PROBE_PORTS["gateway"]
    assert Settings.from_env({"RANKSTREAM_METRICS_PORT": "9100"}).metrics_port == 9100


# -- Dockerfile -----------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    instructions = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    return instructions


def test_dockerfile_runs_the_cli() -> None:
    """ENTRYPOINT is the rankstream command and CMD one of its services."""
    instructions = dict(dockerfile_instructions())
    assert json.loads(instructions["ENTRYPOINT"]) == ["rankstream"]
    command = json.loads(instructions["CMD"])
    assert command[0] in cli_commands()
    assert command[0] in SERVICES
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["rankstream"] == "services.cli:main"


def test_dockerfile_environment_and_ports() -> None:
    """Every ENV name is a setting and EXPOSE lists the three probe ports."""
    env_names: list[str] = []
    exposed: list[int] = []
    for keyword, rest in dockerfile_instructions():
        if keyword == "ENV":
            env_names += [token.split("=", 1)[0] for token in shlex.split(rest)]
        if keyword == "EXPOSE":
            exposed += [int(port) for port in rest.split()]
    unknown = set(rankstream_variables(env_names)) - settings_variables()
    assert unknown == set()
    assert sorted(exposed) == sorted(set(PROBE_PORTS.values()))


def test_dockerfile_copies_existing_paths() -> None:
    """Every COPY source exists in the repository."""
    for keyword, rest in dockerfile_instructions():
        if keyword == "COPY":
            for source in rest.split()[:-1]:
                assert (ROOT / source).exists(), source


# -- docker compose ---------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def test_compose_services_and_images(compose: dict) -> None:
    """Redis 7 with the append-only file, PostgreSQL 16, a migration and the four services."""
    services = compose["services"]
    assert set(services) == SERVICES | {"redis", "postgres", "migrate"}
    assert services["redis"]["image"].startswith("redis:7")
    assert services["redis"]["command"][services["redis"]["command"].index("--appendonly") + 1] == "yes"
    assert services["redis"]["command"][services["redis"]["command"].index("--maxmemory-policy") + 1] == "noeviction"
    assert services["postgres"]["image"].startswith("postgres:16")
    for name in SERVICES | {"migrate"}:
        assert services[name]["image"] == "rankstream:latest"
        assert services[name]["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}
        assert (DEPLOY / ".." / services[name]["build"]["dockerfile"]).exists()


def test_compose_commands_exist(compose: dict) -> None:
    """Each Rankstream container runs a command of the CLI named like its service."""
    commands = cli_commands()
    for name in SERVICES | {"migrate"}:
        command = compose["services"][name]["command"]
        assert command[0] in commands
        assert command[0] == name


def test_compose_environment_and_ports(compose: dict) -> None:
    """Only known variables are set, and published ports are the ones the services listen on."""
    variables = settings_variables()
    for name in SERVICES | {"migrate"}:
        service = compose["services"][name]
        assert set(rankstream_variables(list(service["environment"]))) - variables == set()
        assert service["environment"]["RANKSTREAM_REDIS_URL"] == "redis://redis:6379/0"
    assert compose["services"]["ingest"]["ports"] == [f"{PROBE_PORTS['ingest']}:{compose['services']['ingest']['environment']['RANKSTREAM_HTTP_PORT']}"]
    assert compose["services"]["gateway"]["ports"] == [f"{PROBE_PORTS['gateway']}:{compose['services']['gateway']['environment']['RANKSTREAM_WS_PORT']}"]


def test_compose_consumers_scale(compose: dict) -> None:
    """Rankers and persisters publish no host port and set no consumer name, so --scale works."""
    for name in ("ranker", "persister"):
        service = compose["services"][name]
        assert "ports" not in service
        assert "container_name" not in service
        assert "RANKSTREAM_CONSUMER_NAME" not in service["environment"]
        assert service["environment"]["RANKSTREAM_METRICS_PORT"] == str(PROBE_PORTS[name])
        assert service["expose"] == [str(PROBE_PORTS[name])]


def test_compose_healthchecks_use_probes(compose: dict) -> None:
    """Each service's health check reads its own /readyz port."""
    for name in SERVICES:
        test = " ".join(compose["services"][name]["healthcheck"]["test"])
        assert f"http://127.0.0.1:{PROBE_PORTS[name]}/readyz" in test


# -- Kubernetes ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def manifests() -> list[dict]:
    documents = []
    for path in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        documents += [document for document in yaml.safe_load_all(path.read_text()) if document]
    return documents


def of_kind(manifests: list[dict], kind: str) -> dict[str, dict]:
    return {document["metadata"]["name"]: document for document in manifests if document["kind"] == kind}


def test_kubernetes_kinds(manifests: list[dict]) -> None:
    """A Deployment and a PodDisruptionBudget per service, ScaledObjects for both groups."""
    assert set(of_kind(manifests, "Deployment")) == {f"rankstream-{name}" for name in SERVICES}
    assert set(of_kind(manifests, "PodDisruptionBudget")) == {f"rankstream-{name}" for name in SERVICES}
    assert set(of_kind(manifests, "ScaledObject")) == {"rankstream-ranker", "rankstream-persister"}
    assert set(of_kind(manifests, "Service")) == {"rankstream-ingest", "rankstream-gateway"}
    assert set(of_kind(manifests, "Job")) == {"rankstream-migrate"}


def test_kubernetes_containers(manifests: list[dict]) -> None:
    """Containers run CLI commands, set known variables, probe the right port and request resources."""
    commands = cli_commands()
    variables = settings_variables()
    config = of_kind(manifests, "ConfigMap")["rankstream"]["data"]
    assert set(rankstream_variables(list(config))) - variables == set()
    assert set(config) == set(rankstream_variables(list(config)))
    for name in SERVICES:
        pod = of_kind(manifests, "Deployment")[f"rankstream-{name}"]["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["image"] == "rankstream:latest"
        assert container["args"] == [name]
        assert container["args"][0] in commands
        assert set(rankstream_variables([entry["name"] for entry in container["env"]])) - variables == set()
        ports = [port["containerPort"] for port in container["ports"]]
        assert ports == [PROBE_PORTS[name]]
        for probe_kind, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"), ("startupProbe", "/healthz")):
            probe = container[probe_kind]["httpGet"]
            assert probe == {"path": path, "port": PROBE_PORTS[name]}
            assert probe["path"] in PROBE_PATHS
        assert set(container["resources"]["requests"]) == {"cpu", "memory"}
    (migrate,) = of_kind(manifests, "Job")["rankstream-migrate"]["spec"]["template"]["spec"]["containers"]
    assert migrate["args"] == ["migrate"]
    assert migrate["args"][0] in commands


def test_kubernetes_port_settings(manifests: list[dict]) -> None:
    """The ConfigMap's ports are the ones the containers expose."""
    config = of_kind(manifests, "ConfigMap")["rankstream"]["data"]
    settings = Settings.from_env(config)
    assert (settings.http_port, settings.ws_port, settings.metrics_port) == (8000, 8001, 9100)
    assert settings.namespace == "rs"


def test_kubernetes_budgets_select_deployments(manifests: list[dict]) -> None:
    """Each budget's selector matches the labels of its Deployment's pods."""
    deployments = of_kind(manifests, "Deployment")
    for name, budget in of_kind(manifests, "PodDisruptionBudget").items():
        labels = deployments[name]["spec"]["template"]["metadata"]["labels"]
        selector = budget["spec"]["selector"]["matchLabels"]
        assert selector.items() <= labels.items()
        assert budget["spec"]["minAvailable"] == 1


def test_kubernetes_scaled_objects(manifests: list[dict]) -> None:
    """KEDA scales each consumer Deployment on its own group's pending entries of the events stream."""
    deployments = of_kind(manifests, "Deployment")
    for name, scaled in of_kind(manifests, "ScaledObject").items():
        assert scaled["spec"]["scaleTargetRef"]["name"] == name
        assert name in deployments
        (trigger,) = scaled["spec"]["triggers"]
        assert trigger["type"] == "redis-streams"
        metadata = trigger["metadata"]
        assert metadata["consumerGroup"] in CONSUMER_GROUPS
        assert name == f"rankstream-{metadata['consumerGroup']}"
        assert metadata["stream"] == Names("rs").events_stream
        assert int(metadata["pendingEntriesCount"]) > 0
        assert trigger["authenticationRef"]["name"] in of_kind(manifests, "TriggerAuthentication")


def test_kubernetes_boards_parse(manifests: list[dict]) -> None:
    """The boards ConfigMap contains a valid boards file."""
    from shared.boards import parse_boards

    boards = parse_boards(of_kind(manifests, "ConfigMap")["rankstream-boards"]["data"]["boards.toml"])
    assert [board.id for board in boards] == ["pushups-weekly"]


# -- Grafana ------------------------------------------------------------------------


def registry_metric_names() -> set[str]:
    """Return every sample name the registry can export, with a snapshot in place so sampled metrics appear."""
    previous = SNAPSHOT.snapshot
    SNAPSHOT.snapshot = RedisSnapshot(
        stream_length_entries=0,
        dead_letter_length_entries=0,
        groups=[GroupInfo(name="ranker", consumers=0, pending_entries=0, lag_entries=0, last_delivered_id="0-0")],
        memory=MemoryInfo(used_memory_bytes=0, maxmemory_bytes=0, fragmentation_ratio=1.0, evicted_keys=0, maxmemory_policy="noeviction"),
    )
    try:
        names = set()
        for family in REGISTRY.collect():
            names.add(family.name)
            names |= {sample.name for sample in family.samples}
            if family.type == "counter":
                names.add(f"{family.name}_total")
            if family.type == "histogram":
                names |= {f"{family.name}_bucket", f"{family.name}_sum", f"{family.name}_count"}
    finally:
        SNAPSHOT.snapshot = previous
    return names


def test_grafana_dashboard_metrics_exist() -> None:
    """Every metric a dashboard query names is one Rankstream exports."""
    dashboard = json.loads((DEPLOY / "grafana" / "rankstream-dashboard.json").read_text())
    known = registry_metric_names()
    queried = set()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            queried |= set(re.findall(r"\brankstream_[a-z_]+", target["expr"]))
    assert queried
    assert queried - known == set()
    assert len(queried) >= 15
