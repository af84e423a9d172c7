"""deploy/: the docker-compose stack (server, Prometheus, Grafana) is a valid Compose file
whose mounts hold the files it names, and every metric the dashboard, the alert rules and
the chart's autoscalers query exists in the server's real /metrics output, with the labels
the queries use."""

from __future__ import annotations

import json
import re
from pathlib import Path, PurePosixPath

import jsonschema
import pytest
import yaml
from compose_spec import PyCompose

from tests.deploy.conftest import CHART, DEPLOY, ROOT, load_values, render
from tests.deploy.crd_schemas import PROMETHEUS_RULE
from tests.deploy.metric_names import Catalogue, parse, problems, registry_catalogue, uses

COMPOSE = DEPLOY / "docker-compose.yml"
RULES_DIR = DEPLOY / "prometheus" / "rules"
DASHBOARDS_DIR = DEPLOY / "grafana" / "dashboards"
DASHBOARD = DASHBOARDS_DIR / "granite-speech.json"

# Alerts the issue asks for, by what they watch.
REQUIRED_ALERTS = {
    "not ready": {"GraniteSpeechDown", "GraniteSpeechNotReady"},
    "error rate": {"GraniteSpeechHighErrorRate"},
    "real-time factor": {"GraniteSpeechRealTimeFactorDegraded", "GraniteSpeechSlowerThanRealTime"},
    "saturation / 429": {"GraniteSpeechRejectingRequests", "GraniteSpeechEngineQueueBacklog"},
}


# ---- every query in deploy/ and the chart ------------------------------------------------

def rule_files() -> list[Path]:
    return sorted(RULES_DIR.glob("*.yml"))


def alert_rules() -> list[dict]:
    return [rule for path in rule_files()
            for group in yaml.safe_load(path.read_text())["groups"] for rule in group["rules"]]


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def dashboard_panels() -> list[dict]:
    panels = []
    for panel in dashboard()["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))
    return panels


def chart_queries() -> list[tuple[str, str]]:
    all_on = render(load_values(CHART / "ci" / "all-on-values.yaml"))
    queries = [(f"chart ScaledObject trigger {t['name']}", t["metadata"]["query"])
               for t in all_on.one("ScaledObject")["spec"]["triggers"]]
    hpa = render(load_values(CHART / "ci" / "hpa-values.yaml")).one("HorizontalPodAutoscaler")
    queries += [("chart HPA pods metric", m["pods"]["metric"]["name"])
                for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    return queries


def all_queries() -> list[tuple[str, str]]:
    queries = [(f"rule {rule['alert']}", rule["expr"]) for rule in alert_rules()]
    for panel in dashboard_panels():
        for target in panel.get("targets", []):
            queries.append((f"dashboard panel {panel['title']!r} {target['refId']}",
                            target["expr"]))
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", variable["definition"])
            assert match, variable["definition"]
            queries.append((f"dashboard variable {variable['name']}", match.group(1)))
    return queries + chart_queries()


def test_metric_name_matching_knows_the_suffixes():
    catalogue = registry_catalogue()
    assert problems("rate(granite_speech_real_time_factor_bucket[5m])", catalogue) == []
    assert problems("granite_speech_requests_total", catalogue) == []
    assert problems("granite_speech_request_duration_seconds_count", catalogue) == []
    # A histogram's or a counter's bare family name is no series at all.
    assert problems("granite_speech_real_time_factor", catalogue)
    assert problems("rate(granite_speech_requests[5m])", catalogue)
    assert problems("granite_speech_inflight_requests_total", catalogue)  # a gauge
    assert problems("granite_speech_inflight_request", catalogue)
    assert problems('granite_speech_requests_total{route="/v1/models"}', catalogue)
    assert problems("sum by (route) (granite_speech_requests_total)", catalogue)
    assert problems('granite_speech_engine_requests{state="waiting", job="x"}', catalogue) == []
    assert problems("up", catalogue) and problems("up", catalogue,
                                                  external=frozenset({"up"})) == []
    assert problems("histogram_quantile(0.9, sum by (le) (rate("
                    "granite_speech_real_time_factor_bucket[$__rate_interval])))", catalogue) == []


def test_every_query_names_real_metrics_and_labels():
    catalogue = registry_catalogue()
    queries = all_queries()
    assert len(queries) > 30
    found = {source: problems(expr, catalogue) for source, expr in queries}
    assert {source: p for source, p in found.items() if p} == {}
    used = {use.name for _, expr in queries for use in uses(expr)[0]}
    # The dashboard shows every metric the server has.
    families = {name.removesuffix("_total") for name in catalogue.families
                if not name.endswith("_created")}  # creation timestamps: nothing to show
    shown = {re.sub(r"_(total|bucket|sum|count)$", "", name) for name in used}
    assert families <= shown, f"not on the dashboard or in the rules: {families - shown}"


@pytest.mark.asyncio(loop_scope="session")
async def test_every_query_names_metrics_of_a_live_server(http):
    """The strongest form: the names come from GET /metrics of the real server (the
    session's live server on the tiny model), not from the module that defines them."""
    response = await http.get("/metrics")
    assert response.status_code == 200
    live = Catalogue.from_exposition(response.text)
    registry = registry_catalogue()
    assert set(live.series) >= set(registry.series)
    for family in live.families:  # label names from the module for families still empty
        if family in registry.families:
            live.add_labels(family, set().union(*(
                labels for name, labels in registry.series.items()
                if name.startswith(family.removesuffix("_total")))))
    found = {source: problems(expr, live) for source, expr in all_queries()}
    assert {source: p for source, p in found.items() if p} == {}


# ---- alert rules ------------------------------------------------------------------------

def test_rules_are_valid_rule_files():
    assert rule_files() == [RULES_DIR / "granite-speech.rules.yml"]
    for path in rule_files():
        document = yaml.safe_load(path.read_text())
        jsonschema.validate(document, PROMETHEUS_RULE["properties"]["spec"])
        names = [rule["alert"] for group in document["groups"] for rule in group["rules"]]
        assert len(names) == len(set(names))


def test_rules_cover_what_operators_need():
    names = {rule["alert"] for rule in alert_rules()}
    for need, alerts in REQUIRED_ALERTS.items():
        assert alerts <= names, need


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda rule: rule["alert"])
def test_each_rule_parses_and_explains_itself(rule):
    parse(rule["expr"])
    assert re.fullmatch(r"\d+[smh]", rule["for"])
    assert rule["labels"]["severity"] in {"warning", "critical"}
    assert rule["annotations"]["summary"] and rule["annotations"]["description"]
    # Go templates in annotations: only $labels.<name> and $value, well formed.
    for text in rule["annotations"].values():
        for template in re.findall(r"{{(.*?)}}", text):
            assert re.fullmatch(r"\s*\$(labels\.\w+|value)(\s*\|\s*\w+)?\s*", template), template


# ---- the Grafana dashboard ---------------------------------------------------------------

def test_dashboard_is_a_well_formed_grafana_dashboard():
    board = dashboard()
    assert board["uid"] == "granite-speech" and board["title"]
    panels = dashboard_panels()
    assert len({p["id"] for p in panels}) == len(panels)
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in panels:
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24 and grid["h"] > 0
        if panel["type"] == "row":
            continue
        assert panel["type"] in {"timeseries", "stat"}
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"]
            parse(target["expr"])
            referenced = set(re.findall(r"\$(\w+)", target["expr"])) - {"__rate_interval"}
            assert referenced <= set(variables), referenced


# ---- docker-compose: one GPU host with Prometheus and Grafana ------------------------------

@pytest.fixture(scope="module")
def compose() -> dict:
    spec = PyCompose.from_yaml(COMPOSE.read_text())  # the Compose specification, strictly
    spec.to_spec()
    return yaml.safe_load(COMPOSE.read_text())


def bind_mounts(service: dict) -> dict[str, Path]:
    """Container path -> host path of a service's bind mounts (relative to deploy/)."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target, *_ = volume.split(":")
        if source.startswith((".", "/")):
            mounts[target] = (DEPLOY / source).resolve()
    return mounts


def host_path(service: dict, container_path: str) -> Path:
    for target, source in sorted(bind_mounts(service).items(), key=lambda m: -len(m[0])):
        if container_path == target or container_path.startswith(target + "/"):
            return source / PurePosixPath(container_path).relative_to(target)
    raise AssertionError(f"{container_path} is not mounted from the host")


def test_compose_services_and_mounts_exist(compose):
    assert set(compose["services"]) == {"granite-speech", "prometheus", "grafana"}
    for service in compose["services"].values():
        for target, source in bind_mounts(service).items():
            assert source.exists(), f"{source} (mounted at {target}) is missing"


def test_compose_server_runs_the_gpu_image_with_a_cache_volume(compose):
    from tests.deploy.test_dockerfile import stages

    server = compose["services"]["granite-speech"]
    assert (DEPLOY / server["build"]["context"]).resolve() == ROOT
    assert server["build"]["target"] == "gpu" and "gpu" in stages()
    devices = server["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert "model-cache:/cache" in server["volumes"] and "model-cache" in compose["volumes"]
    assert server["read_only"] is True and {"/tmp", "/home/app"} <= set(server["tmpfs"])
    grace = float(server["environment"]["GRANITE_SPEECH_SHUTDOWN_GRACE_SECONDS"])
    assert int(server["stop_grace_period"].removesuffix("s")) >= grace + 10
    assert "8000:8000" in server["ports"]


def test_compose_prometheus_loads_the_rules_and_scrapes_the_server(compose):
    prometheus = compose["services"]["prometheus"]
    flags = dict(arg.removeprefix("--").split("=", 1) for arg in prometheus["command"])
    config_path = host_path(prometheus, flags["config.file"])
    config = yaml.safe_load(config_path.read_text())
    loaded = set()
    for pattern in config["rule_files"]:
        directory = host_path(prometheus, str(PurePosixPath(pattern).parent))
        loaded |= set(directory.glob(PurePosixPath(pattern).name))
    assert loaded == set(rule_files())
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    (targets,) = job["static_configs"]
    host, port = targets["targets"][0].split(":")
    assert host in compose["services"] and host == "granite-speech"
    assert f"{port}:{port}" in compose["services"][host]["ports"]


def test_compose_grafana_provisions_the_datasource_and_dashboard(compose):
    grafana = compose["services"]["grafana"]
    provisioning = host_path(grafana, "/etc/grafana/provisioning")
    (datasource,) = yaml.safe_load(
        (provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"
    (provider,) = yaml.safe_load(
        (provisioning / "dashboards" / "granite-speech.yml").read_text())["providers"]
    dashboards = host_path(grafana, provider["options"]["path"])
    assert dashboards == DASHBOARDS_DIR.resolve()
    assert sorted(dashboards.glob("*.json")) == [DASHBOARD]
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert host_path(grafana, home) == DASHBOARD.resolve()
