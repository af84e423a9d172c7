"""The Helm chart: `helm lint` and `helm template` through the real Helm library, every
rendered object against the Kubernetes API schemas (kubernetes-validate) or, for the CRD
kinds, against structural schemas; then what the objects must mean for this server."""

from __future__ import annotations

import base64
import math
from pathlib import Path

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml
from pydantic_settings import CliApp

from granite_speech_server.config import Settings
from tests.deploy.conftest import (CHART, DEPLOY, NAMESPACE, RELEASE, ROOT, VALUES_FILES,
                                   Rendered, load_values, render)
from tests.deploy.crd_schemas import CRD_SCHEMAS
from tests.deploy.metric_names import TARGET_LABELS, problems, registry_catalogue

# Kinds rendered from CRDs: no Kubernetes schema exists for them in kubernetes-validate;
# they are checked against tests/deploy/crd_schemas.py instead. Nothing else may skip.
CRD_KINDS = {kind for _, kind in CRD_SCHEMAS}
MIN_KUBE = yaml.safe_load((CHART / "Chart.yaml").read_text())["kubeVersion"]
KUBE_VERSIONS = [MIN_KUBE.removeprefix(">=").removesuffix("-0"),
                 kubernetes_validate.utils.latest_version()]
SETTINGS_ENV = "GRANITE_SPEECH_"
IMAGE_WRITABLE = ("/cache", "/tmp", "/home/app")
"""Everything the image writes (HF_HOME and vLLM caches under /cache, temp files, HOME)."""


def all_renders() -> list[tuple[str, dict | None]]:
    return [("default", None), *((path.stem, load_values(path)) for path in VALUES_FILES)]


RENDER_IDS = [name for name, _ in all_renders()]


# ---- helm lint and the values schema ----------------------------------------------------

@pytest.mark.parametrize("values", [values for _, values in all_renders()], ids=RENDER_IDS)
def test_helm_lint_strict_is_clean(values):
    report = helm.lint(CHART, values, strict=True, namespace=NAMESPACE)
    assert report["errors"] == []
    # Severity 1 is INFO (only "icon is recommended"); 2 warning, 3 error.
    assert [m for m in report["messages"] if m["severity"] >= 2] == []
    assert report["total_charts_linted"] == 1


def test_helm_lint_reports_values_that_break_the_schema():
    report = helm.lint(CHART, {"replicaCount": "two"}, strict=True)
    assert report["errors"] or any(m["severity"] == 3 for m in report["messages"])


@pytest.mark.parametrize("bad", [
    {"replicas": 2},  # misspelt top-level key
    {"server": {"port": "8000"}},
    {"server": {"gpuMemoryUtilization": 1.5}},
    {"modelCache": {"type": "hostPath"}},
    {"server": {"logFormat": "xml"}},
    {"config": {"Max-Segment-Seconds": 30}},
    {"keda": {"prometheus": {"serverAddress": "prometheus:9090"}}},
    {"podDisruptionBudget": {"maxUnavailable": "half"}},
], ids=lambda bad: next(iter(bad)))
def test_values_schema_refuses_mistakes(bad):
    with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmValuesError):
        chart.validate_schema(bad)


def test_values_schema_covers_every_documented_value_and_nothing_else():
    with helm.Chart.load(CHART) as chart:
        schema, defaults = chart.schema, chart.values
        chart.validate_schema(None)
    assert schema is not None
    assert set(schema["properties"]) - {"global"} == set(defaults)


# ---- every rendered object is valid Kubernetes ------------------------------------------

@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_every_object_validates_against_the_kubernetes_schemas(each_render, kube_version):
    crd_objects, invalid = [], []
    for obj in each_render.objects:
        if (obj["apiVersion"], obj["kind"]) in CRD_SCHEMAS:
            crd_objects.append(obj)
            continue
        try:
            kubernetes_validate.validate(obj, kube_version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            invalid.append(f"{obj['kind']}/{obj['metadata']['name']}: {exc.message} "
                           f"at {'/'.join(map(str, exc.path))}")
    assert invalid == [], f"invalid on Kubernetes {kube_version}"
    for obj in crd_objects:
        jsonschema.validate(obj, CRD_SCHEMAS[obj["apiVersion"], obj["kind"]])


def test_crd_schemas_catch_mistakes(all_on_render):
    monitor = yaml.safe_load(yaml.safe_dump(all_on_render.one("ServiceMonitor")))
    monitor["spec"]["endpoints"][0]["interval"] = "15 seconds"
    scaled = yaml.safe_load(yaml.safe_dump(all_on_render.one("ScaledObject")))
    scaled["spec"]["triggers"][0]["metadata"]["threshold"] = 10
    for obj in (monitor, scaled):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(obj, CRD_SCHEMAS[obj["apiVersion"], obj["kind"]])


def test_default_values_render_only_core_kinds(default_render):
    assert default_render.kinds() == ["Deployment", "PodDisruptionBudget", "Service",
                                      "ServiceAccount"]


def test_all_on_values_render_every_optional_kind(all_on_render):
    assert all_on_render.kinds() == sorted([
        "Deployment", "Ingress", "NetworkPolicy", "PersistentVolumeClaim",
        "PodDisruptionBudget", "PrometheusRule", "ScaledObject", "Secret", "Service",
        "ServiceAccount", "ServiceMonitor"])
    assert {kind for kind in all_on_render.kinds() if kind in CRD_KINDS} == CRD_KINDS
    hpa = render(load_values(CHART / "ci" / "hpa-values.yaml"))
    assert "HorizontalPodAutoscaler" in hpa.kinds()


def test_every_values_file_is_rendered():
    assert {path.name for path in VALUES_FILES} >= {"all-on-values.yaml", "hpa-values.yaml",
                                                    "cpu-values.yaml"}


# ---- the Deployment runs this server correctly ------------------------------------------

def pod(rendered: Rendered) -> dict:
    return rendered.one("Deployment")["spec"]["template"]


def container(rendered: Rendered) -> dict:
    containers = pod(rendered)["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def server_env(rendered: Rendered) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container(rendered)["env"]
            if e["name"].startswith(SETTINGS_ENV)}


def settings_of(rendered: Rendered, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The server's Settings exactly as the container would build them: its environment
    plus its arguments, through the real CLI parser."""
    import os

    for name in list(os.environ):
        if name.startswith(SETTINGS_ENV):
            monkeypatch.delenv(name)
    for name, value in server_env(rendered).items():
        monkeypatch.setenv(name, value)
    return CliApp.run(Settings, cli_args=container(rendered).get("args", []))


def test_every_server_variable_is_a_real_setting(each_render):
    # pydantic-settings silently ignores unknown GRANITE_SPEECH_* variables: a typo would
    # leave the server on its default without a word.
    fields = {SETTINGS_ENV + name.upper() for name in Settings.model_fields}
    assert set(server_env(each_render)) <= fields


@pytest.mark.parametrize("values", [values for _, values in all_renders()], ids=RENDER_IDS)
def test_environment_and_args_build_valid_settings(values, monkeypatch):
    rendered = render(values)
    settings = settings_of(rendered, monkeypatch)
    chart_server = {**(yaml.safe_load((CHART / "values.yaml").read_text())["server"]),
                    **((values or {}).get("server") or {})}
    assert settings.port == chart_server["port"]
    assert settings.shutdown_grace_seconds == chart_server["shutdownGraceSeconds"]
    assert settings.shutdown_delay_seconds == chart_server["shutdownDelaySeconds"]
    assert settings.tensor_parallel_size == chart_server["tensorParallelSize"]
    assert settings.max_inflight_audio_seconds == chart_server["maxInflightAudioSeconds"]
    assert settings.host == "0.0.0.0"


def test_all_on_settings_reach_the_server(all_on_render, monkeypatch):
    settings = settings_of(all_on_render, monkeypatch)
    assert settings.model_names == ["granite-4.0-1b-speech", "whisper-1"]
    assert settings.max_segment_seconds == 25 and settings.vad_threshold == 0.6
    assert settings.enforce_eager is True
    assert settings.segment_padding_ms == 200  # from extraArgs
    assert settings.log_format == "json" and settings.max_num_seqs == 128
    assert settings.api_key_file == Path("/etc/granite-speech/api-keys/api-keys")


def test_probes_use_the_servers_endpoints_with_a_generous_start_budget(each_render):
    c = container(each_render)
    ports = {port["name"]: port["containerPort"] for port in c["ports"]}
    assert ports["http"] == int(server_env(each_render)["GRANITE_SPEECH_PORT"])
    expected = {"startupProbe": "/ready", "readinessProbe": "/ready", "livenessProbe": "/health"}
    for probe, path in expected.items():
        assert c[probe]["httpGet"] == {"path": path, "port": "http"}
    startup = c["startupProbe"]
    # Model download (~4.6 GB) + load + CUDA graphs: at least 15 minutes before a restart.
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 15 * 60
    # Liveness must not kill a pod that is merely busy for a few seconds.
    live = c["livenessProbe"]
    assert live["periodSeconds"] * live["failureThreshold"] >= 30


def test_termination_grace_covers_the_servers_drain(each_render):
    env = server_env(each_render)
    drain = (float(env["GRANITE_SPEECH_SHUTDOWN_DELAY_SECONDS"])
             + float(env["GRANITE_SPEECH_SHUTDOWN_GRACE_SECONDS"]))
    grace = pod(each_render)["spec"]["terminationGracePeriodSeconds"]
    margin = ((each_render.values or {}).get("terminationGraceMarginSeconds")
              or yaml.safe_load((CHART / "values.yaml").read_text())["terminationGraceMarginSeconds"])
    assert grace >= drain + 10
    assert grace == math.ceil(float(env["GRANITE_SPEECH_SHUTDOWN_DELAY_SECONDS"])) + math.ceil(
        float(env["GRANITE_SPEECH_SHUTDOWN_GRACE_SECONDS"])) + margin


def test_all_on_grace_period_follows_the_server_values(all_on_render):
    # 10 s delay + 120.5 s grace (rounded up) + 20 s margin.
    assert pod(all_on_render)["spec"]["terminationGracePeriodSeconds"] == 10 + 121 + 20


def test_pod_is_non_root_with_a_read_only_root_filesystem(each_render):
    spec = pod(each_render)["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] != 0
    assert spec["automountServiceAccountToken"] is False
    security = container(each_render)["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    mounts = {m["mountPath"]: m["name"] for m in container(each_render)["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    for path in IMAGE_WRITABLE:
        assert path in mounts, f"{path} is not writable"
        assert mounts[path] in volumes
    assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"


def test_image_caches_live_on_the_cache_volume():
    from tests.deploy.test_dockerfile import image_env

    for target in ("gpu", "cpu"):
        env = image_env(target)
        assert env["HF_HOME"].startswith("/cache/")
        assert env["VLLM_CACHE_ROOT"].startswith("/cache/")
        assert env["HOME"] in IMAGE_WRITABLE


def test_model_cache_volume_kinds(default_render, all_on_render):
    cache = {v["name"]: v for v in pod(default_render)["spec"]["volumes"]}["cache"]
    assert "emptyDir" in cache
    claim = {v["name"]: v for v in pod(all_on_render)["spec"]["volumes"]}["cache"]
    pvc = all_on_render.one("PersistentVolumeClaim")
    assert claim["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    existing = render(load_values(CHART / "ci" / "hpa-values.yaml"))
    volume = {v["name"]: v for v in pod(existing)["spec"]["volumes"]}["cache"]
    assert volume["persistentVolumeClaim"]["claimName"] == "granite-speech-models"
    assert existing.maybe("PersistentVolumeClaim") is None


def test_gpus_follow_tensor_parallelism(default_render, all_on_render):
    for rendered, gpus in ((default_render, 1), (all_on_render, 2)):
        resources = container(rendered)["resources"]
        assert resources["requests"]["nvidia.com/gpu"] == gpus
        assert resources["limits"]["nvidia.com/gpu"] == gpus
        assert server_env(rendered)["GRANITE_SPEECH_TENSOR_PARALLEL_SIZE"] == str(gpus)
        assert {"cpu", "memory"} <= set(resources["requests"])


def test_cpu_values_request_no_gpu():
    rendered = render(load_values(CHART / "ci" / "cpu-values.yaml"))
    resources = container(rendered)["resources"]
    assert not any("gpu" in name for part in resources.values() for name in part)
    assert "GRANITE_SPEECH_GPU_MEMORY_UTILIZATION" not in server_env(rendered)
    assert server_env(rendered)["GRANITE_SPEECH_CPU_KV_CACHE_GIB"] == "8"
    assert container(rendered)["image"].endswith(":0.1.0-cpu")


def test_api_keys_from_a_created_secret(all_on_render, tmp_path, monkeypatch):
    secret = all_on_render.one("Secret")
    data = base64.b64decode(secret["data"]["api-keys"]).decode()
    key_file = tmp_path / "api-keys"
    key_file.write_text(data)
    spec = pod(all_on_render)["spec"]
    volume = {v["name"]: v for v in spec["volumes"]}["api-keys"]
    assert volume["secret"]["secretName"] == secret["metadata"]["name"]
    mount = {m["name"]: m for m in container(all_on_render)["volumeMounts"]}["api-keys"]
    settings = settings_of(all_on_render, monkeypatch)
    assert settings.api_key_file == Path(mount["mountPath"]) / volume["secret"]["items"][0]["path"]
    # The server reads the file the Secret becomes, one key a line.
    assert settings.model_copy(update={"api_key_file": key_file}).load_api_keys() == [
        "key-one", "key-two"]
    assert "checksum/api-keys" in pod(all_on_render)["metadata"]["annotations"]


def test_changed_api_keys_roll_the_pods(all_on_values):
    changed = yaml.safe_load(yaml.safe_dump(all_on_values))
    changed["apiKeys"]["keys"] = ["key-three"]
    before = pod(render(all_on_values))["metadata"]["annotations"]["checksum/api-keys"]
    after = pod(render(changed))["metadata"]["annotations"]["checksum/api-keys"]
    assert before != after


def test_api_keys_from_an_existing_secret():
    rendered = render(load_values(CHART / "ci" / "hpa-values.yaml"))
    assert rendered.maybe("Secret") is None
    volume = {v["name"]: v for v in pod(rendered)["spec"]["volumes"]}["api-keys"]
    assert volume["secret"] == {"secretName": "speech-api-keys",
                                "items": [{"key": "keys.txt", "path": "keys.txt"}]}
    env = server_env(rendered)
    assert env["GRANITE_SPEECH_API_KEY_FILE"] == "/etc/granite-speech/api-keys/keys.txt"


@pytest.mark.parametrize("values, message", [
    ({"autoscaling": {"enabled": True}, "keda": {"enabled": True}}, "enable one"),
    ({"apiKeys": {"enabled": True}}, "apiKeys.existingSecret"),
    ({"modelCache": {"type": "existingClaim"}}, "modelCache.existingClaim"),
    ({"autoscaling": {"enabled": True, "targetInflightAudioSecondsPerPod": None}},
     "targetInflightAudioSecondsPerPod"),
], ids=["hpa-and-keda", "keys-missing", "claim-missing", "hpa-without-target"])
def test_contradictory_values_fail_with_a_message(values, message):
    with pytest.raises(helm.HelmError, match=message):
        render(values)


# ---- the objects point at each other ----------------------------------------------------

def labels_match(selector: dict, labels: dict) -> bool:
    return selector.items() <= labels.items()


def test_selectors_and_references_agree(each_render):
    deployment = each_render.one("Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert labels_match(deployment["spec"]["selector"]["matchLabels"], pod_labels)
    service = each_render.one("Service")
    assert labels_match(service["spec"]["selector"], pod_labels)
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"]
    assert pod(each_render)["spec"]["serviceAccountName"] in {
        obj["metadata"]["name"] for obj in each_render.objects if obj["kind"] == "ServiceAccount"}
    if pdb := each_render.maybe("PodDisruptionBudget"):
        assert labels_match(pdb["spec"]["selector"]["matchLabels"], pod_labels)
    if policy := each_render.maybe("NetworkPolicy"):
        assert labels_match(policy["spec"]["podSelector"]["matchLabels"], pod_labels)
    if ingress := each_render.maybe("Ingress"):
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                assert backend["name"] == service["metadata"]["name"]
                assert backend["port"]["name"] in {p["name"] for p in service["spec"]["ports"]}
    if monitor := each_render.maybe("ServiceMonitor"):
        assert labels_match(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
        assert monitor["spec"]["namespaceSelector"]["matchNames"] == [NAMESPACE]
        assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["http"]
        assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    for kind in ("HorizontalPodAutoscaler", "ScaledObject"):
        if scaler := each_render.maybe(kind):
            assert scaler["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
            assert "replicas" not in deployment["spec"]  # the autoscaler owns it


def test_service_monitor_keeps_the_servers_endpoint_label(all_on_render):
    # The operator adds target labels (namespace, service, pod, container, endpoint...).
    # Where a server metric has a label of the same name, Prometheus renames the server's
    # to exported_<name> unless honorLabels is on, and every query on it breaks.
    catalogue = registry_catalogue()
    clashes = set().union(*catalogue.series.values()) & TARGET_LABELS
    if clashes:
        assert all_on_render.one("ServiceMonitor")["spec"]["endpoints"][0]["honorLabels"] is True
        default = yaml.safe_load((CHART / "values.yaml").read_text())
        assert default["serviceMonitor"]["honorLabels"] is True


def test_release_names_shape_the_object_names():
    assert render(name="granite-speech-server").one("Deployment")["metadata"]["name"] == RELEASE
    assert render(name="asr").one("Deployment")["metadata"]["name"] == "asr-granite-speech-server"
    assert render({"fullnameOverride": "speech"}).one("Service")["metadata"]["name"] == "speech"


# ---- autoscaling on the server's own metrics ---------------------------------------------

def test_keda_triggers_query_real_metrics_of_this_release(all_on_render):
    catalogue = registry_catalogue()
    service = all_on_render.one("Service")["metadata"]["name"]
    triggers = all_on_render.one("ScaledObject")["spec"]["triggers"]
    assert {t["name"] for t in triggers} == {"inflight-audio-seconds", "engine-waiting-segments"}
    for trigger in triggers:
        assert trigger["type"] == "prometheus"
        query = trigger["metadata"]["query"]
        assert problems(query, catalogue) == [], query
        assert f'namespace="{NAMESPACE}"' in query and f'service="{service}"' in query
        assert float(trigger["metadata"]["threshold"]) > 0
        assert trigger["authenticationRef"] == {"name": "prometheus-auth"}


def test_hpa_scales_on_a_real_gauge_and_cpu():
    catalogue = registry_catalogue()
    hpa = render(load_values(CHART / "ci" / "hpa-values.yaml")).one("HorizontalPodAutoscaler")
    metrics = hpa["spec"]["metrics"]
    pods = [m["pods"] for m in metrics if m["type"] == "Pods"]
    assert [p["metric"]["name"] for p in pods] == ["granite_speech_inflight_audio_seconds"]
    assert catalogue.families[pods[0]["metric"]["name"]] == "gauge"
    assert pods[0]["target"] == {"type": "AverageValue", "averageValue": "2400"}
    assert [m["resource"]["name"] for m in metrics if m["type"] == "Resource"] == ["cpu"]
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 300


def test_prometheus_rule_carries_the_deploy_rules(all_on_render):
    source = DEPLOY / "prometheus" / "rules" / "granite-speech.rules.yml"
    copy = CHART / "files" / "granite-speech.rules.yml"
    assert copy.read_bytes() == source.read_bytes(), (
        f"copy {source.relative_to(ROOT)} to {copy.relative_to(ROOT)}")
    assert all_on_render.one("PrometheusRule")["spec"] == yaml.safe_load(source.read_text())
