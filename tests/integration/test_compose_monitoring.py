"""docker-compose.yml's ``monitoring`` profile, checked without Docker: Prometheus runs
only with the profile, on loopback, with the repository's config, and that config
scrapes ``/metrics`` of every runtime service at the port its command listens on."""

from __future__ import annotations

import re
from typing import Any

import yaml
from support import ROOT

from runtime.cli import _parser

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
PROMETHEUS = SERVICES["prometheus"]
DURATION = re.compile(r"^(\d+(ms|s|m|h|d|w|y))+$")
"""Prometheus's duration syntax."""


def mounted_config() -> dict[str, Any]:
    """The Prometheus config the service mounts (read-only, from the repository)."""
    [flag] = [arg for arg in PROMETHEUS["command"] if arg.startswith("--config.file=")]
    target = flag.partition("=")[2]
    [source] = [
        source
        for source, mounted, *mode in (v.split(":") for v in PROMETHEUS["volumes"])
        if mounted == target and mode == ["ro"] and source.startswith("./")
    ]
    loaded: dict[str, Any] = yaml.safe_load((ROOT / source).read_text())
    return loaded


def runtime_services() -> dict[str, int]:
    """Every service that runs ``statefun run``, with the port its ingress listens on."""
    found = {}
    for name, service in SERVICES.items():
        command = service.get("command") or []
        if command[:2] == ["statefun", "run"]:
            found[name] = _parser().parse_args(command[1:]).ingress_port
    return found


def test_prometheus_runs_only_with_the_monitoring_profile_on_loopback() -> None:
    assert PROMETHEUS["profiles"] == ["monitoring"]
    assert PROMETHEUS["image"].startswith("prom/prometheus:")
    # `docker compose up` alone starts what it did before.
    assert {name for name, s in SERVICES.items() if "profiles" not in s} == {
        "kafka",
        "functions",
        "runtime",
    }
    [mapping] = PROMETHEUS["ports"]
    assert mapping == "127.0.0.1:9090:9090"
    # Every published port of every service is on loopback only.
    for service in SERVICES.values():
        for published in service.get("ports", []):
            assert str(published).startswith("127.0.0.1:"), published


def test_prometheus_scrapes_the_metrics_of_every_runtime_service_at_its_port() -> None:
    config = mounted_config()
    assert set(config) == {"global", "scrape_configs"}
    for value in config["global"].values():
        assert DURATION.match(value), value
    runtimes = runtime_services()
    assert runtimes == {"runtime": 8090}
    scraped: dict[str, int] = {}
    for job in config["scrape_configs"]:
        assert job["metrics_path"] == "/metrics"
        for discovery in job["dns_sd_configs"]:
            # Docker's DNS answers a service's name with every replica's address.
            assert discovery["type"] == "A"
            assert DURATION.match(discovery["refresh_interval"])
            scraped.update(dict.fromkeys(discovery["names"], discovery["port"]))
    assert scraped == runtimes
    # The port is the one the service publishes from its containers.
    container_port = SERVICES["runtime"]["ports"][0].rsplit(":", 1)[1]
    assert int(container_port) == runtimes["runtime"]


def test_the_readme_says_how_to_start_the_profile_and_where_the_consoles_are() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "docker compose --profile monitoring up" in readme
    assert "http://127.0.0.1:9090" in readme
    assert "http://127.0.0.1:8090/ui" in readme
