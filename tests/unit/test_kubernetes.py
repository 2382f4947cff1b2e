"""The Kubernetes kit (deploy/kubernetes): the base and the production overlay build with
kustomize and validate against Kubernetes' own schemas, offline; each process is handed only
settings it reads, with values it accepts, its secrets from the Secrets docs/operations.md
says to create (the kit fills none), and probes on a port it declares and routes it serves."""

from __future__ import annotations

import functools
import os
import re
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from fastapi import FastAPI
from pydantic_settings import BaseSettings
from starlette.routing import Match

from api.app import create_app as create_api
from api.settings import ApiSettings
from notifier.app import create_app as create_notifier
from notifier.settings import NotifierSettings
from outbox_relay.app import create_app as create_relay
from outbox_relay.settings import RelaySettings
from postroom.settings import CommonSettings
from tests.support.settings import (
    make_api_settings,
    make_notifier_settings,
    make_relay_settings,
)

ROOT = Path(__file__).resolve().parents[2]
KIT = ROOT / "deploy" / "kubernetes"
KITS = ["base", "overlays/production"]
# The Kubernetes release whose schemas the kit must satisfy (Debian's kubectl is 1.32).
KUBERNETES = "1.32"
KUBECTL = shutil.which("kubectl")
pytestmark = pytest.mark.skipif(
    KUBECTL is None, reason="kubectl is not installed (apt install kubectl): it builds the kit"
)

# Each container's process, by its command, and the settings class that process reads.
SETTINGS: dict[str, type[BaseSettings]] = {
    "api": ApiSettings,
    "relay": RelaySettings,
    "notifier": NotifierSettings,
    "migrate": CommonSettings,
}
# Custom resources: kubernetes-validate knows only the built-in kinds; their shape is
# checked below by hand.
CUSTOM_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}
# Not a SecretStr, but it carries the database's password.
SECRET_SETTINGS = {"DATABASE_URL"}
NOWHERE = "postgresql://postgres@127.0.0.1:9/none"  # never connected: no lifespan runs


def build(kit: str) -> list[dict[str, Any]]:
    assert KUBECTL is not None
    # Offline: no cluster configuration, and any fetch (a remote base) goes to a dead proxy.
    dead = "http://127.0.0.1:9"
    env = {**os.environ, "KUBECONFIG": os.devnull, "HTTP_PROXY": dead, "HTTPS_PROXY": dead}
    env |= {"http_proxy": dead, "https_proxy": dead, "NO_PROXY": "", "no_proxy": ""}
    done = subprocess.run(
        [KUBECTL, "kustomize", str(KIT / kit)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@pytest.fixture(scope="module")
def built() -> dict[str, list[dict[str, Any]]]:
    return {kit: build(kit) for kit in KITS}


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] == kind]


def named(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (doc,) = [doc for doc in of_kind(docs, kind) if doc["metadata"]["name"] == name]
    return doc


def workloads(docs: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """Every Deployment and Job with each of its containers."""
    for doc in docs:
        if doc["kind"] in ("Deployment", "Job"):
            for container in doc["spec"]["template"]["spec"]["containers"]:
                yield doc, container


def process(container: dict[str, Any]) -> str:
    command = container["command"]
    assert command[0] == "postroom", command
    assert command[1] in SETTINGS, command
    return str(command[1])


def environment(docs: list[dict[str, Any]], container: dict[str, Any]) -> dict[str, Any]:
    """Each variable the container gets, with where it comes from: ("value", v),
    ("secret", name, key) or ("field", path)."""
    found: dict[str, Any] = {}
    for source in container.get("envFrom", []):
        data = named(docs, "ConfigMap", source["configMapRef"]["name"])["data"]
        found |= {name: ("value", value) for name, value in data.items()}
    for variable in container.get("env", []):
        if "value" in variable:
            found[variable["name"]] = ("value", variable["value"])
        elif "secretKeyRef" in variable["valueFrom"]:
            ref = variable["valueFrom"]["secretKeyRef"]
            found[variable["name"]] = ("secret", ref["name"], ref["key"])
        else:
            found[variable["name"]] = ("field", variable["valueFrom"]["fieldRef"]["fieldPath"])
    return found


def secret_fields(cls: type[BaseSettings]) -> set[str]:
    return {
        name.upper()
        for name, field in cls.model_fields.items()
        if "SecretStr" in str(field.annotation)
    } | SECRET_SETTINGS


@functools.cache
def app_of(name: str) -> FastAPI:
    if name == "api":
        return create_api(make_api_settings(NOWHERE))
    if name == "relay":
        return create_relay(make_relay_settings(NOWHERE, "127.0.0.1:9"))
    settings = make_notifier_settings(NOWHERE, "127.0.0.1:9", "http://127.0.0.1:9/", "k8s")
    return create_notifier(settings, consume=False)


def serves(name: str, path: str) -> bool:
    """Whether the process's app has a GET route for `path` (as a probe or a scrape asks)."""
    scope = {"type": "http", "method": "GET", "path": path, "root_path": "", "headers": []}
    return any(route.matches(scope)[0] is Match.FULL for route in app_of(name).routes)


def documented_secrets() -> set[tuple[str, str]]:
    """(Secret, key) pairs docs/operations.md's Kubernetes section creates."""
    text = (ROOT / "docs" / "operations.md").read_text()
    section = text.split("\n## Kubernetes\n", 1)[1].split("\n## ", 1)[0]
    pairs = set()
    for command in re.split(r"\n(?=kubectl )", section):
        secret = re.search(r"create secret generic (\S+)", command)
        if secret:
            for key in re.findall(r"--from-literal=([A-Z_]+)=", command):
                pairs.add((secret[1], key))
    return pairs


def test_the_base_and_the_overlay_build(built: dict[str, list[dict[str, Any]]]) -> None:
    for kit in KITS:
        kinds = {doc["kind"] for doc in built[kit]}
        assert {"Deployment", "Service", "Job", "ConfigMap"} <= kinds, kit
    assert {"PodDisruptionBudget", "ServiceMonitor"} <= {
        doc["kind"] for doc in built["overlays/production"]
    }


@pytest.mark.parametrize("kit", KITS)
def test_every_document_validates_against_the_kubernetes_schemas_offline(
    kit: str, built: dict[str, list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_network(*_: object) -> None:
        raise AssertionError("the validation tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    problems = []
    for doc in built[kit]:
        if (doc["apiVersion"], doc["kind"]) in CUSTOM_KINDS:
            continue
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        try:
            # Strict: a field Kubernetes does not know (a typo) fails too.
            kubernetes_validate.validate(doc, KUBERNETES, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(part) for part in exc.path)
            problems.append(f"{where}: {path}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            problems.append(f"{where}: {exc.message}")
    assert problems == []


@pytest.mark.parametrize("kit", KITS)
def test_each_process_gets_only_settings_it_reads(
    kit: str, built: dict[str, list[dict[str, Any]]]
) -> None:
    unread = {}
    for workload, container in workloads(built[kit]):
        fields = {name.upper() for name in SETTINGS[process(container)].model_fields}
        extra = sorted(set(environment(built[kit], container)) - fields)
        if extra:
            unread[workload["metadata"]["name"]] = extra
    assert unread == {}


@pytest.mark.parametrize("kit", KITS)
def test_each_process_starts_with_the_settings_it_is_given(
    kit: str, built: dict[str, list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    for cls in SETTINGS.values():
        for name in cls.model_fields:
            monkeypatch.delenv(name.upper(), raising=False)
    for workload, container in workloads(built[kit]):
        cls = SETTINGS[process(container)]
        given = environment(built[kit], container)
        values: dict[str, Any] = {}
        for name, source in given.items():
            if name in secret_fields(cls):
                # A secret set in the open would sit in the repository and in `kubectl get`.
                assert source[0] == "secret", f"{workload['metadata']['name']}: {name}"
            if source[0] == "value":
                values[name.lower()] = source[1]
            elif source[0] == "field":
                values[name.lower()] = f"{workload['metadata']['name']}-7d9f8-x2k4q"
            elif name == "DATABASE_URL":
                values["database_url"] = "postgresql://postroom:a-password@db:5432/postroom"
            else:
                values[name.lower()] = "a-long-random-value-0123456789abcdef"
        # Every secret the process needs outside development is handed to it.
        settings = cls(_env_file=None, **values)  # type: ignore[call-arg]
        assert getattr(settings, "app_env", None) == "production", workload["metadata"]["name"]


@pytest.mark.parametrize("kit", KITS)
def test_secrets_are_the_documented_ones_and_the_kit_fills_none(
    kit: str, built: dict[str, list[dict[str, Any]]]
) -> None:
    used = {
        source[1:]
        for _, container in workloads(built[kit])
        for source in environment(built[kit], container).values()
        if source[0] == "secret"
    }
    documented = documented_secrets()
    assert used, "no process takes a secret"
    assert sorted(used - documented) == [], "docs/operations.md does not say to create these"
    assert sorted(documented - used) == [], "docs/operations.md creates these for nothing"
    filled = [
        doc["metadata"]["name"]
        for doc in of_kind(built[kit], "Secret")
        if doc.get("data") or doc.get("stringData")
    ]
    assert filled == []


@pytest.mark.parametrize("kit", KITS)
def test_probes_ask_a_declared_port_for_a_route_the_process_serves(
    kit: str, built: dict[str, list[dict[str, Any]]]
) -> None:
    ports = {"api": "API_PORT", "relay": "RELAY_METRICS_PORT", "notifier": "NOTIFIER_PORT"}
    deployments = of_kind(built[kit], "Deployment")
    assert len(deployments) == 3
    for deployment in deployments:
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        name = process(container)
        declared = {port["name"]: port["containerPort"] for port in container["ports"]}
        # The process listens where the container says it does.
        given = environment(built[kit], container)
        assert given[ports[name]] == ("value", str(*declared.values())), name
        probes = {kind: container[f"{kind}Probe"]["httpGet"] for kind in ("liveness", "readiness")}
        assert probes["liveness"]["path"] == "/healthz", name
        assert probes["readiness"]["path"] == "/readyz", name
        if "startupProbe" in container:
            probes["startup"] = container["startupProbe"]["httpGet"]
        for kind, probe in probes.items():
            assert probe["port"] in declared, f"{name} {kind}: port {probe['port']}"
            assert serves(name, probe["path"]), f"{name} {kind}: {probe['path']}"


@pytest.mark.parametrize("kit", KITS)
def test_the_job_migrates_the_database(kit: str, built: dict[str, list[dict[str, Any]]]) -> None:
    (job,) = of_kind(built[kit], "Job")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["postroom", "migrate"]
    assert environment(built[kit], container)["DATABASE_URL"][0] == "secret"


@pytest.mark.parametrize("kit", KITS)
def test_every_pod_runs_unprivileged_on_a_read_only_root(
    kit: str, built: dict[str, list[dict[str, Any]]]
) -> None:
    for workload, container in workloads(built[kit]):
        pod = workload["spec"]["template"]["spec"]
        name = workload["metadata"]["name"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] == 10001, name  # the Dockerfile's user
        security = container["securityContext"]
        assert security["allowPrivilegeEscalation"] is False, name
        assert security["readOnlyRootFilesystem"] is True, name
        assert security["capabilities"]["drop"] == ["ALL"], name


def test_production_keeps_relays_running_through_a_drain(
    built: dict[str, list[dict[str, Any]]],
) -> None:
    docs = built["overlays/production"]
    budgets = of_kind(docs, "PodDisruptionBudget")
    for deployment in of_kind(docs, "Deployment"):
        name = deployment["metadata"]["name"]
        replicas = deployment["spec"]["replicas"]
        assert replicas >= 2, name
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        covering = [
            budget
            for budget in budgets
            if budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
        ]
        assert len(covering) == 1, name
        spec = covering[0]["spec"]
        # A drain leaves at least one pod of the process running.
        left = spec["minAvailable"] if "minAvailable" in spec else replicas - spec["maxUnavailable"]
        assert left >= 1, name


def test_the_service_monitor_scrapes_every_process(
    built: dict[str, list[dict[str, Any]]],
) -> None:
    docs = built["overlays/production"]
    (monitor,) = of_kind(docs, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    spec = monitor["spec"]
    assert set(spec) <= {"jobLabel", "selector", "endpoints", "namespaceSelector"}
    for endpoint in spec["endpoints"]:
        assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout"}, endpoint
        assert re.fullmatch(r"[0-9]+[smh]", endpoint.get("interval", "30s")), endpoint
    scraped = {endpoint["port"]: endpoint["path"] for endpoint in spec["endpoints"]}
    services = [
        service
        for service in of_kind(docs, "Service")
        if spec["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    ]
    jobs = set()
    for service in services:
        # The scrape's job is the process, as the alerts and the dashboard expect.
        job = service["metadata"]["labels"][spec["jobLabel"]]
        jobs.add(job)
        (port,) = [port for port in service["spec"]["ports"] if port["name"] in scraped]
        assert serves(job, scraped[port["name"]]), job
        (deployment,) = [
            deployment
            for deployment in of_kind(docs, "Deployment")
            if service["spec"]["selector"].items()
            <= deployment["spec"]["template"]["metadata"]["labels"].items()
        ]
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert port["targetPort"] in {p["name"] for p in container["ports"]}, job
        assert process(container) == job
    assert jobs == {"api", "relay", "notifier"}
