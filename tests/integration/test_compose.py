"""docker-compose.yml, exercised without Docker: every service but Kafka runs its own
command as a local process, with its own environment, service hostnames mapped to
loopback and Kafka replaced by the test broker; the runtime's command runs three times,
as ``docker compose up --scale runtime=3`` runs it, each replica on its own port. Then
the README's request must get a reply through every replica, and ``statefun status``
must show the three members of one application, and the functions must refuse a call
the runtime did not sign."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from kafka.admin import KafkaAdminClient
from support import ROOT, free_port, wait_until

from runtime.cli import _parser, runtime_config
from runtime.cluster.node import member_url
from statefun.module_spec import load_module_spec
from statefun.signing import PRIVATE_KEY_FILE, PUBLIC_KEY_FILE, write_key_pair

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(120)]

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
# The port each service listens on inside its container.
CONTAINER_PORTS = {"functions": "8000", "runtime": "8090"}
REPLICAS = 3
TOKENS = {"admin": "a" * 32, "client": "c" * 32, "member": "m" * 32}
"""The deployment's secrets/tokens.yaml, as docs/security.md says to create it."""
ADMIN = {"authorization": f"Bearer {TOKENS['admin']}"}
CLIENT = {"authorization": f"Bearer {TOKENS['client']}"}
"""``docker compose up --scale runtime=3``, as the README says."""


def host_ports(mapping: str) -> tuple[str, range, str]:
    """``HOST_IP:FIRST-LAST:CONTAINER`` as (host ip, host ports, container port)."""
    host_ip, ports, container = mapping.rsplit(":", 2)
    first, _, last = ports.partition("-")
    return host_ip, range(int(first), int(last or first) + 1), container


def test_the_compose_file_wires_kafka_the_runtime_and_the_functions() -> None:
    kafka, runtime = SERVICES["kafka"], SERVICES["runtime"]
    assert kafka["image"].startswith("apache/kafka:")
    assert kafka["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert "kafka-broker-api-versions.sh" in " ".join(kafka["healthcheck"]["test"])
    assert runtime["depends_on"]["kafka"] == {"condition": "service_healthy"}
    # Kafka's data is a volume (the checkpoints are in Kafka too): `down` then `up` resumes
    log_dirs = kafka["environment"]["KAFKA_LOG_DIRS"]
    assert any(v.split(":") == ["kafka-data", log_dirs] for v in kafka["volumes"])
    assert set(COMPOSE["volumes"]) == {"kafka-data", "prometheus-data"}
    assert runtime["build"] == SERVICES["functions"]["build"] == "."
    assert (ROOT / "Dockerfile").is_file()
    # the runtime is healthy when it is ready to take and process messages
    assert "/ready" in " ".join(runtime["healthcheck"]["test"])


def test_the_ingress_asks_for_tokens_from_a_secret_and_the_functions_are_not_published() -> None:
    runtime, functions = SERVICES["runtime"], SERVICES["functions"]
    assert runtime["secrets"] == ["statefun_tokens", "statefun_signing_key"]
    assert runtime["environment"]["STATEFUN_TOKENS_FILE"] == "/run/secrets/statefun_tokens"
    assert "--insecure" not in runtime["command"]
    assert "ports" not in functions  # reachable on the project's network only
    for secret in COMPOSE["secrets"].values():
        assert secret["file"].startswith("./secrets/")
    assert "secrets/" in (ROOT / ".gitignore").read_text().split()


def test_the_runtime_signs_with_the_private_key_and_the_functions_verify_the_public_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime, functions = SERVICES["runtime"], SERVICES["functions"]
    key_variable = "GREETER_SIGNING_KEY_FILE"
    # the two files `statefun keys new secrets/` writes, each to one service only
    assert COMPOSE["secrets"]["statefun_signing_key"]["file"] == f"./secrets/{PRIVATE_KEY_FILE}"
    assert COMPOSE["secrets"]["statefun_verify_key"]["file"] == f"./secrets/{PUBLIC_KEY_FILE}"
    assert "statefun_verify_key" not in runtime["secrets"]
    assert functions["secrets"] == ["statefun_verify_key"]
    assert runtime["environment"][key_variable] == "/run/secrets/statefun_signing_key"
    assert functions["environment"]["GREETER_VERIFY_KEY_FILE"] == "/run/secrets/statefun_verify_key"
    # the module the runtime runs signs with that file, and signs nothing without it
    private, _ = write_key_pair(tmp_path)
    module = ROOT / runtime["command"][runtime["command"].index("--module") + 1]
    monkeypatch.delenv(key_variable, raising=False)
    assert all(e.signing_key is None for e in load_module_spec(module).endpoints)
    monkeypatch.setenv(key_variable, str(private))
    assert all(e.signing_key is not None for e in load_module_spec(module).endpoints)


def test_every_runtime_replica_is_a_member_with_its_own_host_port() -> None:
    runtime = SERVICES["runtime"]
    command = runtime["command"]
    assert "--alone" not in command  # with Kafka, a member of the application
    # no checkpoint folder: a cluster keeps its checkpoints in Kafka
    assert "--checkpoint-dir" not in command
    assert "volumes" not in runtime
    # each replica its own host port, on loopback only
    [mapping] = runtime["ports"]
    host_ip, ports, container = host_ports(mapping)
    assert host_ip == "127.0.0.1"
    assert len(ports) >= REPLICAS
    assert container == CONTAINER_PORTS["runtime"]


def test_a_replica_announces_its_hostname_which_docker_dns_resolves() -> None:
    """The replicas share one command, so no --member-url can name each: a replica's peer
    URL is the default, its hostname. Docker names a container's endpoint on a
    user-defined network (compose's project network) by its container name, aliases,
    short id and hostname; the hostname is the short id unless the service sets one,
    which would give every replica the same."""
    runtime = SERVICES["runtime"]
    assert "hostname" not in runtime
    assert "--member-url" not in runtime["command"]
    args = _parser().parse_args([*runtime["command"][1:], "--kafka", "kafka:9092"])
    config = runtime_config(args)
    assert member_url(config) == f"http://{socket.gethostname()}:{CONTAINER_PORTS['runtime']}"


class LocalService:
    """One compose service's command, run here with its environment and mapped names."""

    def __init__(
        self,
        name: str,
        hosts: dict[str, str],
        port: int,
        volumes: dict[str, Path],
        secrets: dict[str, Path],
        log: Path,
    ):
        service = SERVICES[name]
        own_port = CONTAINER_PORTS[name]
        mounts = {}
        for volume in service.get("volumes", []):
            source, _, target = volume.partition(":")
            mounts[target] = volumes[source]  # a named volume becomes a local directory
        for secret in service.get("secrets", []):
            mounts[f"/run/secrets/{secret}"] = secrets[secret]  # where Docker mounts it

        def local(value: str) -> str:
            for host, address in hosts.items():
                value = value.replace(host, address)
            for target, directory in mounts.items():
                value = value.replace(target, str(directory))
            if value == "0.0.0.0":
                return "127.0.0.1"
            return str(port) if value == own_port else value

        command = [local(str(arg)) for arg in service["command"]]
        binary = shutil.which(command[0], path=str(Path(sys.executable).parent))
        assert binary, f"{command[0]} is not installed next to {sys.executable}"
        environment = {k: local(str(v)) for k, v in service.get("environment", {}).items()}
        self.port = port
        self.log = log
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                [binary, *command[1:]],
                cwd=ROOT,
                env={**os.environ, **environment},
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def terminate(self) -> None:
        self.process.terminate()

    def wait(self) -> None:
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@dataclass(frozen=True)
class Deployment:
    functions: int
    """The functions' port."""
    runtimes: list[int]
    """Each runtime replica's ingress port."""


@pytest.fixture
def compose(kafka_bootstrap: str, tmp_path: Path) -> Iterator[Deployment]:
    deployment = Deployment(free_port(), [free_port() for _ in range(REPLICAS)])
    hosts = {
        "kafka:9092": kafka_bootstrap,
        "functions:8000": f"127.0.0.1:{deployment.functions}",
    }
    volumes = {name: tmp_path / name for name in COMPOSE.get("volumes", {})}
    # as docs/security.md says to create them: the tokens, then `statefun keys new secrets/`
    secrets_dir = tmp_path / "secrets"
    secrets = {
        name: secrets_dir / Path(secret["file"]).name for name, secret in COMPOSE["secrets"].items()
    }
    secrets_dir.mkdir(mode=0o700)
    secrets["statefun_tokens"].write_text(
        yaml.safe_dump([{"token": t, "role": r} for r, t in TOKENS.items()])
    )
    assert statefun("keys", "new", str(secrets_dir))
    started: list[LocalService] = []
    try:
        # in the order depends_on gives: functions, then the runtime's replicas
        started.append(
            LocalService(
                "functions", hosts, deployment.functions, volumes, secrets, tmp_path / "f.log"
            )
        )
        for i, port in enumerate(deployment.runtimes, start=1):
            log = tmp_path / f"runtime-{i}.log"
            started.append(LocalService("runtime", hosts, port, volumes, secrets, log))
        yield deployment
    finally:
        # SIGTERM to the replicas together (one at a time, each would hand its partitions
        # to the next to stop), then to the functions they may still be calling.
        replicas, functions = started[1:], started[:1]
        for group in (replicas, functions):
            for service in group:
                service.terminate()
            for service in group:
                service.wait()
        for service in started:
            print(f"--- {service.log.name}\n{service.log.read_text()}")


def runtime_healthcheck_passes(port: int) -> bool:
    """Run the runtime service's healthcheck command here, against ``port``."""
    kind, program, *args = SERVICES["runtime"]["healthcheck"]["test"]
    assert kind == "CMD"
    assert program == "python"
    container_port = CONTAINER_PORTS["runtime"]
    args = [a.replace(f":{container_port}/", f":{port}/") for a in args]
    return subprocess.run([sys.executable, *args], capture_output=True, timeout=10).returncode == 0


def statefun(*args: str) -> str:
    """The output of the ``statefun`` command installed next to this Python."""
    binary = shutil.which("statefun", path=str(Path(sys.executable).parent))
    assert binary
    done = subprocess.run([binary, *args], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout


def one_application_of(ports: list[int]) -> bool:
    """Every replica sees the same generation of all of them, each owning partitions."""
    views = []
    for port in ports:
        try:
            views.append(
                httpx.get(f"http://127.0.0.1:{port}/v1/cluster", headers=ADMIN, timeout=5).json()
            )
        except httpx.HTTPError:
            return False
    urls = {f"http://127.0.0.1:{port}" for port in ports}
    return all(
        view["mode"] == "cluster"
        and {m["url"] for m in view["members"]} == urls
        and all(m["partitions"] for m in view["members"])
        and not view["unowned"]
        and view["generation"] == views[0]["generation"]
        for view in views
    )


@pytest.mark.slow
def test_three_replicas_answer_the_readme_request_as_one_application(
    compose: Deployment, kafka_bootstrap: str
) -> None:
    for port in compose.runtimes:
        wait_until(lambda port=port: runtime_healthcheck_passes(port), timeout=60, interval=0.2)
    # Whoever reaches the functions without the runtime's key gets nothing run.
    forged = httpx.post(
        f"http://127.0.0.1:{compose.functions}/statefun",
        content=b"\x00",
        headers={"content-type": "application/octet-stream"},
        timeout=5,
    )
    assert forged.status_code == 401, forged.text
    assert forged.json()["error"] == "missing_signature"
    wait_until(lambda: one_application_of(compose.runtimes), timeout=60, interval=0.2)
    # The README's request through each replica in turn: one name, so one address, which
    # one replica owns; the visits count on whichever replica is asked.
    greetings = [
        "Hello Alice! Nice to meet you.",
        "Hello again Alice! This is visit number 2.",
        "Hello again Alice! This is visit number 3.",
    ]
    for port, greeting in zip(compose.runtimes, greetings, strict=True):
        answer = httpx.post(
            f"http://127.0.0.1:{port}/v1/call/example/greeter/Alice",
            content="Alice",
            headers={"content-type": "text/plain", **CLIENT},
            timeout=30,
        )
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"type": "io.statefun.types/string", "value": greeting}
    # `statefun status` through any replica shows the three members
    for port in compose.runtimes:
        ingress = f"http://127.0.0.1:{port}"
        token = ("--token", TOKENS["admin"])
        shown = json.loads(statefun("status", "--json", "--ingress", ingress, *token))
        assert len(shown["members"]) == REPLICAS
        assert sum(m["me"] for m in shown["members"]) == 1
        assert shown["coordinator"] in {m["id"] for m in shown["members"]}
        text = statefun("status", "--ingress", ingress, *token)
        assert all(f"http://127.0.0.1:{p}" in text for p in compose.runtimes), text
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        topics = admin.list_topics()
    finally:
        admin.close()
    assert "statefun-messages" in topics  # the log is in Kafka
    assert "statefun-decisions" in topics  # and so are the application's checkpoints
