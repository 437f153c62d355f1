"""docker-compose.yml, exercised without Docker: every service but Kafka runs its own
command as a local process, with its own environment, service hostnames mapped to
loopback and Kafka replaced by the test broker; then the README's request must get a
reply."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from kafka.admin import KafkaAdminClient
from support import ROOT, free_port, wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(90)]

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
# The port each service listens on inside its container.
CONTAINER_PORTS = {"functions": "8000", "runtime": "8090"}


def test_the_compose_file_wires_kafka_the_runtime_and_the_functions() -> None:
    kafka, runtime = SERVICES["kafka"], SERVICES["runtime"]
    assert kafka["image"].startswith("apache/kafka:")
    assert kafka["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert "kafka-broker-api-versions.sh" in " ".join(kafka["healthcheck"]["test"])
    assert runtime["depends_on"]["kafka"] == {"condition": "service_healthy"}
    assert runtime["ports"] == ["8090:8090"]
    # the checkpoint store is a volume every runtime process can reach
    assert "checkpoints:/data/checkpoints" in runtime["volumes"]
    assert "/data/checkpoints" in runtime["command"]
    # and Kafka's data is one too: `down` then `up` keeps the log with its checkpoints
    log_dirs = kafka["environment"]["KAFKA_LOG_DIRS"]
    assert any(v.split(":") == ["kafka-data", log_dirs] for v in kafka["volumes"])
    assert set(COMPOSE["volumes"]) == {"kafka-data", "checkpoints"}
    assert runtime["build"] == SERVICES["functions"]["build"] == "."
    assert (ROOT / "Dockerfile").is_file()
    # the runtime is healthy when it is ready to take and process messages
    assert "/ready" in " ".join(runtime["healthcheck"]["test"])


class LocalService:
    """One compose service's command, run here with its environment and mapped names."""

    def __init__(
        self,
        name: str,
        hosts: dict[str, str],
        ports: dict[str, int],
        volumes: dict[str, Path],
        log: Path,
    ):
        service = SERVICES[name]
        own_port = CONTAINER_PORTS[name]
        mounts = {}
        for volume in service.get("volumes", []):
            source, _, target = volume.partition(":")
            mounts[target] = volumes[source]  # a named volume becomes a local directory

        def local(value: str) -> str:
            for host, address in hosts.items():
                value = value.replace(host, address)
            for target, directory in mounts.items():
                value = value.replace(target, str(directory))
            if value == "0.0.0.0":
                return "127.0.0.1"
            return str(ports[name]) if value == own_port else value

        command = [local(str(arg)) for arg in service["command"]]
        binary = shutil.which(command[0], path=str(Path(sys.executable).parent))
        assert binary, f"{command[0]} is not installed next to {sys.executable}"
        environment = {k: local(str(v)) for k, v in service.get("environment", {}).items()}
        self.log = log
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                [binary, *command[1:]],
                cwd=ROOT,
                env={**os.environ, **environment},
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def compose(kafka_bootstrap: str, tmp_path: Path) -> Iterator[dict[str, int]]:
    ports = {"functions": free_port(), "runtime": free_port()}
    hosts = {"kafka:9092": kafka_bootstrap, "functions:8000": f"127.0.0.1:{ports['functions']}"}
    volumes = {name: tmp_path / name for name in COMPOSE.get("volumes", {})}
    started: list[LocalService] = []
    try:
        # in the order depends_on gives: functions, then the runtime
        for name in ("functions", "runtime"):
            started.append(LocalService(name, hosts, ports, volumes, tmp_path / f"{name}.log"))
        yield ports
    finally:
        for service in reversed(started):
            service.stop()
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


def test_compose_services_answer_the_readme_request(
    compose: dict[str, int], kafka_bootstrap: str
) -> None:
    ingress = f"http://127.0.0.1:{compose['runtime']}"
    wait_until(lambda: runtime_healthcheck_passes(compose["runtime"]), timeout=40, interval=0.2)
    answer = httpx.post(
        f"{ingress}/v1/call/example/greeter/Alice",
        content="Alice",
        headers={"content-type": "text/plain"},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    assert answer.json() == {
        "type": "io.statefun.types/string",
        "value": "Hello Alice! Nice to meet you.",
    }
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        assert "statefun-messages" in admin.list_topics()  # the log is in Kafka
    finally:
        admin.close()
