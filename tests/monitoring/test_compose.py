"""Static checks of monitoring/docker-compose.yml and the Grafana provisioning files.

No container engine runs here, so these tests resolve every path a container
would see back to the repository and check that it exists and fits.
"""

from __future__ import annotations

import json
import re
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlparse

import prom
import pytest
import yaml

COMPOSE = prom.MONITORING / "docker-compose.yml"
PROVISIONING = prom.MONITORING / "grafana" / "provisioning"
DATASOURCES = PROVISIONING / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDERS = PROVISIONING / "dashboards" / "dashboards.yml"


def load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict), path
    return data


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load(COMPOSE)


def mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(source, container path) of each volume in short syntax."""
    out = []
    for volume in service.get("volumes", []):
        source, target, *_ = volume.split(":")
        out.append((source, target))
    return out


def to_host(service: dict[str, Any], container_path: str) -> Path | None:
    """The repository path a container path comes from, via the longest bind mount."""
    path = PurePosixPath(container_path)
    best: tuple[int, Path] | None = None
    for source, target in mounts(service):
        if not source.startswith((".", "/")):
            continue  # a named volume: not from the repository
        target_path = PurePosixPath(target)
        if path == target_path or target_path in path.parents:
            rest = path.relative_to(target_path)
            depth = len(target_path.parts)
            if best is None or depth > best[0]:
                best = (depth, (COMPOSE.parent / source / rest).resolve())
    return None if best is None else best[1]


def flag(service: dict[str, Any], name: str) -> str | None:
    for arg in service.get("command", []):
        if arg == name or arg.startswith(name + "="):
            return arg.partition("=")[2]
    return None


def test_compose_defines_prometheus_and_grafana(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"prometheus", "grafana"}
    for name, service in services.items():
        image = service["image"]
        assert re.fullmatch(r"[\w./-]+:v?\d+\.\d+\.\d+", image), f"{name}: pin {image}"
    assert services["prometheus"]["image"].startswith("prom/prometheus:")
    assert services["grafana"]["image"].startswith("grafana/grafana:")
    assert services["grafana"]["depends_on"] == ["prometheus"]


def test_every_bind_mount_exists_and_named_volumes_are_declared(compose: dict[str, Any]) -> None:
    declared = set(compose.get("volumes") or {})
    for name, service in compose["services"].items():
        for source, target in mounts(service):
            assert target.startswith("/"), f"{name}: {target}"
            if source.startswith((".", "/")):
                assert (COMPOSE.parent / source).exists(), f"{name}: {source} does not exist"
                assert (COMPOSE.parent / source).resolve().is_relative_to(prom.MONITORING)
            else:
                assert source in declared, f"{name}: volume {source} not declared"


def test_prometheus_runs_our_config_with_exemplar_storage(compose: dict[str, Any]) -> None:
    service = compose["services"]["prometheus"]
    assert "--enable-feature=exemplar-storage" in service["command"]
    config_path = flag(service, "--config.file")
    assert config_path
    config = to_host(service, config_path)
    assert config == prom.PROMETHEUS_CONFIG.resolve()
    # Rule files are relative to the config, so they must be mounted next to it.
    for rule_file in load(config)["rule_files"]:
        container_rule = PurePosixPath(config_path).parent / rule_file
        assert to_host(service, str(container_rule)) in {f.resolve() for f in prom.RULE_FILES}
    data = flag(service, "--storage.tsdb.path")
    assert data and any(target == data and not source.startswith(".")
                        for source, target in mounts(service)), "TSDB on a named volume"


def test_prometheus_config_scrapes_both_kinds_of_app() -> None:
    config = load(prom.PROMETHEUS_CONFIG)
    assert config["global"]["scrape_interval"] == "15s"
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"instrument-app", "instrument-adapter"}
    targets = {name: [t for sc in job["static_configs"] for t in sc["targets"]]
               for name, job in jobs.items()}
    assert targets == {"instrument-app": ["localhost:8000"],
                       "instrument-adapter": ["localhost:8080"]}
    assert all(job.get("metrics_path", "/metrics") == "/metrics" for job in jobs.values())
    assert config["rule_files"] == [f.name for f in prom.RULE_FILES]
    # The alert on `up` watches exactly these jobs.
    alerts = prom.ALERTS.read_text()
    assert 'up{job=~"instrument-app|instrument-adapter"}' in alerts


def test_grafana_mounts_provisioning_and_the_dashboard(compose: dict[str, Any]) -> None:
    service = compose["services"]["grafana"]
    assert to_host(service, "/etc/grafana/provisioning") == PROVISIONING.resolve()
    assert DATASOURCES.exists() and DASHBOARD_PROVIDERS.exists()
    home = service["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert to_host(service, home) == prom.DASHBOARD.resolve()


def test_dashboard_provider_points_at_the_mounted_dashboard(compose: dict[str, Any]) -> None:
    providers = load(DASHBOARD_PROVIDERS)
    assert providers["apiVersion"] == 1
    [provider] = providers["providers"]
    assert provider["type"] == "file"
    grafana = compose["services"]["grafana"]
    path = PurePosixPath(provider["options"]["path"])
    # The folder itself, or single files, may be mounted: collect what the folder holds.
    folder = to_host(grafana, str(path))
    found = sorted(folder.glob("*.json")) if folder is not None and folder.is_dir() else []
    found += [to_host(grafana, target) for _, target in mounts(grafana)
              if path in PurePosixPath(target).parents and target.endswith(".json")]
    assert found == [prom.DASHBOARD.resolve()]
    assert json.loads(prom.DASHBOARD.read_text())["uid"]


def test_datasource_reaches_the_compose_prometheus(compose: dict[str, Any]) -> None:
    datasources = load(DATASOURCES)
    assert datasources["apiVersion"] == 1
    [source] = datasources["datasources"]
    assert source["type"] == "prometheus" and source["isDefault"] is True
    assert source["access"] == "proxy"
    url = urlparse(source["url"])
    prometheus = compose["services"]["prometheus"]
    listen = flag(prometheus, "--web.listen-address") or ":9090"
    assert url.port == int(listen.rsplit(":", 1)[1])
    if url.hostname == "localhost":
        # Grafana's localhost is Prometheus's only when both share the host's network.
        for service in compose["services"].values():
            assert service.get("network_mode") == "host"
    else:
        assert url.hostname == "prometheus"
    # $__rate_interval is built from the scrape interval Grafana is told.
    scrape = load(prom.PROMETHEUS_CONFIG)["global"]["scrape_interval"]
    assert source["jsonData"]["timeInterval"] == scrape


def test_exemplars_link_the_trace_id_label() -> None:
    [source] = load(DATASOURCES)["datasources"]
    [destination] = source["jsonData"]["exemplarTraceIdDestinations"]
    assert destination["name"] == "trace_id"
    # `$$` escapes provisioning's environment interpolation; Grafana then sees ${__value.raw}.
    assert "$${__value.raw}" in destination["url"]
