"""docker-compose.yml's ``monitoring`` profile, checked without Docker: Prometheus and
Grafana run only with the profile, on loopback, with the repository's configs; the
Prometheus config scrapes ``/metrics`` of every runtime service at the port its command
listens on, and every metric the Grafana dashboard queries is one the runtime exposes."""

from __future__ import annotations

import json
import re
from typing import Any

import yaml
from support import ROOT

from runtime.cli import _parser
from runtime.metrics import Metrics

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
PROMETHEUS = SERVICES["prometheus"]
GRAFANA = SERVICES["grafana"]
DURATION = re.compile(r"^(\d+(ms|s|m|h|d|w|y))+$")
"""Prometheus's duration syntax."""


def mount(service: dict[str, Any], target: str) -> str:
    """The repository path ``service`` mounts read-only at ``target``."""
    [source] = [
        source
        for source, mounted, *mode in (v.split(":") for v in service["volumes"])
        if mounted == target and mode == ["ro"] and source.startswith("./")
    ]
    assert (ROOT / source).exists(), source
    return source


def mounted_config() -> dict[str, Any]:
    """The Prometheus config the service mounts."""
    [flag] = [arg for arg in PROMETHEUS["command"] if arg.startswith("--config.file=")]
    loaded: dict[str, Any] = yaml.safe_load(
        (ROOT / mount(PROMETHEUS, flag.partition("=")[2])).read_text()
    )
    return loaded


def exposed_names() -> set[str]:
    """Every sample name the runtime's metrics can expose."""
    metrics = Metrics()
    metrics.checkpoint_committed(1, 1, 1)  # the age of the last checkpoint shows from then on
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""]}
    return {
        family.name + suffix
        for family in metrics.registry.collect()
        for suffix in suffixes[family.type]
    }


def runtime_services() -> dict[str, int]:
    """Every service that runs ``statefun run``, with the port its ingress listens on."""
    found = {}
    for name, service in SERVICES.items():
        command = service.get("command") or []
        if command[:2] == ["statefun", "run"]:
            found[name] = _parser().parse_args(command[1:]).ingress_port
    return found


def test_prometheus_and_grafana_run_only_with_the_monitoring_profile_on_loopback() -> None:
    assert PROMETHEUS["profiles"] == GRAFANA["profiles"] == ["monitoring"]
    assert PROMETHEUS["image"].startswith("prom/prometheus:")
    assert GRAFANA["image"].startswith("grafana/grafana:")
    # `docker compose up` alone starts what it did before.
    assert {name for name, s in SERVICES.items() if "profiles" not in s} == {
        "kafka",
        "functions",
        "runtime",
    }
    assert PROMETHEUS["ports"] == ["127.0.0.1:9090:9090"]
    assert GRAFANA["ports"] == ["127.0.0.1:3000:3000"]
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
        # with the monitor token, from the Docker secret the prometheus service mounts
        secret = job["authorization"]["credentials_file"].removeprefix("/run/secrets/")
        assert secret in PROMETHEUS["secrets"]
        assert secret in COMPOSE["secrets"]
        for discovery in job["dns_sd_configs"]:
            # Docker's DNS answers a service's name with every replica's address.
            assert discovery["type"] == "A"
            assert DURATION.match(discovery["refresh_interval"])
            scraped.update(dict.fromkeys(discovery["names"], discovery["port"]))
    assert scraped == runtimes
    # The port is the one the service publishes from its containers.
    container_port = SERVICES["runtime"]["ports"][0].rsplit(":", 1)[1]
    assert int(container_port) == runtimes["runtime"]


def test_grafana_shows_the_dashboard_of_metrics_the_runtime_exposes_from_prometheus() -> None:
    provisioning = ROOT / mount(GRAFANA, "/etc/grafana/provisioning")
    dashboards = ROOT / mount(GRAFANA, "/var/lib/grafana/dashboards")
    [source] = yaml.safe_load((provisioning / "datasources/prometheus.yml").read_text())[
        "datasources"
    ]
    # The profile's Prometheus, at the port its container listens on.
    assert source["url"] == "http://prometheus:9090"
    assert PROMETHEUS["ports"][0].endswith(":9090")
    [provider] = yaml.safe_load((provisioning / "dashboards/statefun.yml").read_text())["providers"]
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"
    home = GRAFANA["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith("/var/lib/grafana/dashboards/")
    dashboard = json.loads((dashboards / home.rsplit("/", 1)[1]).read_text())
    exposed = exposed_names()
    queried = set()
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == source["uid"]
        for target in panel["targets"]:
            names = set(re.findall(r"statefun_[a-z_]+", target["expr"]))
            assert names, target["expr"]
            assert names <= exposed, (panel["title"], names - exposed)
            queried |= names
    # The metrics of this profile's purpose are on it.
    assert {
        "statefun_route_calls_total",
        "statefun_route_call_seconds_bucket",
        "statefun_log_read_lag_records",
        "statefun_log_append_seconds_bucket",
    } <= queried


def test_the_readme_says_how_to_start_the_profile_and_where_the_consoles_are() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "docker compose --profile monitoring up" in readme
    assert "http://127.0.0.1:9090" in readme
    assert "http://127.0.0.1:3000" in readme
    assert "http://127.0.0.1:8090/ui" in readme
