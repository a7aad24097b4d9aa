"""The Kubernetes manifests in deploy/k8s: schemas (offline), cross-references, and the real service.

- every resource validates against the Kubernetes JSON schemas bundled by `kubernetes-validate`
  (strict: unknown fields are errors); the ServiceMonitor against the vendored CRD schema in
  deploy/k8s/schemas; broken copies must fail (so the validation really validates);
- names that must agree do: selectors and labels, port names, the HPA target, ConfigMap/Secret
  references, env variable names (they must exist in service/settings.py, registry/config.py or
  the service's own env reads), ConfigMap values (parsed by the real settings classes), the
  profile Job's arguments (parsed by the real `pocketgan profile` command);
- a real `bentoml serve`, configured with the ConfigMap's service settings, answers the
  probe paths and the scrape path, and exposes the HPA's custom metric.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from pathlib import Path

import click
import httpx
import jsonschema
import kubernetes_validate
import pytest
import yaml

from _service_helpers import TASK, start_service

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "deploy" / "k8s"
K8S_VERSION = "1.30.0"  # oldest version we claim to support; autoscaling/v2 and policy/v1 are GA there
SERVICE_MONITOR_SCHEMA = K8S / "schemas" / "servicemonitor_v1.json"
BOTO3_ENV = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_DEFAULT_REGION"}

pytestmark = pytest.mark.timeout(300)


def _kustomization() -> dict:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())


def _docs() -> list[dict]:
    docs = []
    for name in _kustomization()["resources"]:
        docs += [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]
    return docs


def _one(kind: str, docs: list[dict] | None = None) -> dict:
    found = [d for d in (docs or _docs()) if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def _validate(doc: dict) -> None:
    """Raise if `doc` is not a valid resource (kubernetes-validate, or the vendored CRD schema)."""
    if doc.get("kind") == "ServiceMonitor":
        assert doc["apiVersion"] == "monitoring.coreos.com/v1"
        jsonschema.validate(doc, json.loads(SERVICE_MONITOR_SCHEMA.read_text()))
        return
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def _selects(selector: dict, labels: dict) -> bool:
    """matchLabels semantics (the manifests use no matchExpressions)."""
    assert set(selector) <= {"matchLabels"}, selector
    return bool(selector["matchLabels"]) and selector["matchLabels"].items() <= labels.items()


def _pod(kind: str) -> dict:
    return _one(kind)["spec"]["template"]


# ----------------------------------------------------------------------------- schemas


def test_kustomization_lists_every_manifest() -> None:
    listed = set(_kustomization()["resources"])
    present = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present
    kinds = sorted(d["kind"] for d in _docs())
    assert kinds == sorted(["Namespace", "ConfigMap", "Deployment", "Service", "HorizontalPodAutoscaler",
                            "PodDisruptionBudget", "ServiceMonitor", "Job"])


@pytest.mark.parametrize("doc", _docs(), ids=lambda d: f"{d['kind']}-{d['metadata']['name']}")
def test_manifest_is_schema_valid(doc: dict) -> None:
    _validate(doc)


def _broken() -> list[tuple[str, dict]]:
    docs = _docs()
    dep, hpa, sm = _one("Deployment", docs), _one("HorizontalPodAutoscaler", docs), _one("ServiceMonitor", docs)
    cases = []
    d = copy.deepcopy(dep)
    d["spec"]["replicas"] = "two"
    cases.append(("replicas not an integer", d))
    d = copy.deepcopy(dep)
    d["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["pathh"] = "/readyz"
    cases.append(("unknown probe field (strict)", d))
    d = copy.deepcopy(dep)
    del d["spec"]["selector"]
    cases.append(("Deployment without selector", d))
    h = copy.deepcopy(hpa)
    h["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"] = "70%"
    cases.append(("HPA utilization as a string", h))
    s = copy.deepcopy(sm)
    del s["spec"]["selector"]
    cases.append(("ServiceMonitor without selector", s))
    s = copy.deepcopy(sm)
    s["spec"]["endpoints"][0]["interval"] = "15 seconds"
    cases.append(("ServiceMonitor interval not a duration", s))
    s = copy.deepcopy(sm)
    s["spec"]["endpoints"][0]["prot"] = "http"
    cases.append(("ServiceMonitor endpoint unknown field", s))
    return cases


@pytest.mark.parametrize("what,doc", _broken(), ids=[c[0] for c in _broken()])
def test_invalid_manifest_is_rejected(what: str, doc: dict) -> None:
    with pytest.raises((kubernetes_validate.ValidationError, jsonschema.ValidationError)):
        _validate(doc)


# ----------------------------------------------------------------------------- cross-references


def test_selectors_ports_and_targets_agree() -> None:
    docs = _docs()
    dep, svc, pdb = _one("Deployment", docs), _one("Service", docs), _one("PodDisruptionBudget", docs)
    hpa, sm = _one("HorizontalPodAutoscaler", docs), _one("ServiceMonitor", docs)
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    assert _selects(dep["spec"]["selector"], pod_labels)
    assert _selects({"matchLabels": svc["spec"]["selector"]}, pod_labels)
    assert _selects(pdb["spec"]["selector"], pod_labels)
    assert not _selects({"matchLabels": {**svc["spec"]["selector"], "app.kubernetes.io/name": "other"}}, pod_labels)
    # the profile Job's pods must not be picked up by the Service or the PDB
    job_labels = _pod("Job")["metadata"]["labels"]
    assert not _selects({"matchLabels": svc["spec"]["selector"]}, job_labels)
    assert not _selects(pdb["spec"]["selector"], job_labels)

    container = dep["spec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    svc_ports = {p["name"]: p for p in svc["spec"]["ports"]}
    for p in svc_ports.values():
        assert p["targetPort"] in ports
    assert _selects(sm["spec"]["selector"], svc["metadata"]["labels"])
    for ep in sm["spec"]["endpoints"]:
        assert ep["port"] in svc_ports
    ann = dep["spec"]["template"]["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true"
    assert int(ann["prometheus.io/port"]) == ports[svc_ports[sm["spec"]["endpoints"][0]["port"]]["targetPort"]]
    assert ann["prometheus.io/path"] == sm["spec"]["endpoints"][0]["path"]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["port"] in ports

    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == ("apps/v1", "Deployment", dep["metadata"]["name"])
    assert hpa["spec"]["minReplicas"] >= pdb["spec"]["minAvailable"] + 1, "a drain must be able to evict one pod"
    assert "cpu" in container["resources"]["requests"], "CPU utilization needs a CPU request"

    sc = dep["spec"]["template"]["spec"]["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] != 0
    assert container["securityContext"]["allowPrivilegeEscalation"] is False


def _allowed_env_names() -> set[str]:
    """Variables the code reads: pydantic-settings fields (prefix + name or alias) and direct env reads."""
    from registry.config import RegistrySettings
    from service.settings import ServiceSettings

    names = set(BOTO3_ENV)
    for cls in (RegistrySettings, ServiceSettings):
        prefix = cls.model_config["env_prefix"]
        for field, info in cls.model_fields.items():
            if info.exclude:
                continue  # explicit credentials are for tests; in a pod boto3 reads AWS_*
            names.add((prefix + field).upper())
            for alias in getattr(info.validation_alias, "choices", []):
                if isinstance(alias, str) and alias.isupper():
                    names.add(alias)
    for path in list((REPO / "service").glob("*.py")) + list((REPO / "registry").glob("*.py")):
        names |= set(re.findall(r"""os\.environ\.get\(\s*["']([A-Z0-9_]+)["']""", path.read_text()))
    return names


def _env_names(pod: dict, configmap: dict) -> list[str]:
    names = []
    for c in pod["spec"]["containers"]:
        names += [e["name"] for e in c.get("env", [])]
        for src in c.get("envFrom", []):
            assert src["configMapRef"]["name"] == configmap["metadata"]["name"]
            names += list(configmap["data"])
    return names


def test_env_names_exist_in_the_code_and_references_resolve() -> None:
    docs = _docs()
    cm = _one("ConfigMap", docs)
    allowed = _allowed_env_names()
    assert "POCKETGAN_SERVICE_TASKS" in allowed and "POCKETGAN_REGISTRY" in allowed  # the scan works
    assert "POCKETGAN_SERVICE_TYPO" not in allowed
    container_md = (REPO / "deploy" / "container.md").read_text()
    for kind in ("Deployment", "Job"):
        pod = _pod(kind)
        unknown = sorted(set(_env_names(pod, cm)) - allowed)
        assert not unknown, f"{kind}: env variables no code reads: {unknown}"
        for c in pod["spec"]["containers"]:
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:  # the Secret is created by the operator (not in git); its recipe must be documented
                    assert ref["key"] == e["name"] and f"--from-literal={ref['key']}=" in container_md
                    assert f"create secret generic {ref['name']}" in container_md


def test_configmap_values_parse_with_the_real_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from registry.config import RegistrySettings
    from service.settings import ServiceSettings

    data = _one("ConfigMap")["data"]
    for key, value in data.items():
        monkeypatch.setenv(key, value)
    reg = RegistrySettings.from_env()
    assert reg.location() == ("pocketgan-models", "prod")
    assert str(reg.cache_dir) == data["POCKETGAN_CACHE_DIR"]
    assert reg.region == data["AWS_REGION"]
    svc = ServiceSettings()
    assert svc.tasks == json.loads(data["POCKETGAN_SERVICE_TASKS"])
    assert svc.device_classes == json.loads(data["POCKETGAN_SERVICE_DEVICE_CLASSES"])
    assert svc.intra_op_threads == int(data["POCKETGAN_SERVICE_INTRA_OP_THREADS"])
    mounts = {m["mountPath"] for m in _pod("Deployment")["spec"]["containers"][0]["volumeMounts"]}
    assert data["POCKETGAN_CACHE_DIR"] in mounts, "the registry cache must be on a writable volume"


def test_profile_job_runs_a_real_pocketgan_profile_command() -> None:
    from compression_jobs.cli import profile_cli
    from pocketgan.cli import cli as pocketgan_cli
    from registry.names import validate_name

    pod = _pod("Job")
    c = pod["spec"]["containers"][0]
    assert c["command"] == ["pocketgan"] and c["args"][0] == "profile"
    assert pocketgan_cli.get_command(click.Context(pocketgan_cli), "profile") is profile_cli
    ctx = profile_cli.make_context("profile", list(c["args"][1:]))
    assert ctx.params["promoted"] and ctx.params["task"] == TASK
    validate_name(ctx.params["hardware_tag"], "hardware tag")
    assert pod["spec"]["nodeSelector"] and pod["spec"]["tolerations"]
    assert pod["spec"]["restartPolicy"] == "Never"
    assert "nvidia.com/gpu" in c["resources"]["limits"]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed (optional: renders the kustomization)")
def test_kubectl_kustomize_renders_the_set() -> None:
    out = subprocess.run(["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60, check=True)
    rendered = [d for d in yaml.safe_load_all(out.stdout) if d]
    assert sorted(d["kind"] for d in rendered) == sorted(d["kind"] for d in _docs())
    ns = _kustomization()["namespace"]
    for d in rendered:
        _validate(d)
        if d["kind"] != "Namespace":
            assert d["metadata"]["namespace"] == ns
        assert d["metadata"]["labels"]["app.kubernetes.io/part-of"] == "pocketgan"
    images = {c["image"] for d in rendered if d["kind"] in ("Deployment", "Job")
              for c in d["spec"]["template"]["spec"]["containers"]}
    assert images == {f"{i['newName']}:{i['newTag']}" for i in _kustomization()["images"]}


# ----------------------------------------------------------------------------- the real service


def test_probe_and_scrape_paths_answer_on_a_real_service(s3_server, tmp_path: Path) -> None:
    """`bentoml serve` with the ConfigMap's service settings: probes, scrape path and HPA metric exist."""
    data = _one("ConfigMap")["data"]
    service_env = {k: v for k, v in data.items() if k.startswith("POCKETGAN_SERVICE_")}
    service_env["POCKETGAN_SERVICE_POLL_INTERVAL_S"] = "1"  # the test waits for one poll, not ten seconds
    container = _pod("Deployment")["spec"]["containers"][0]
    hpa = _one("HorizontalPodAutoscaler")
    custom = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    sm_path = _one("ServiceMonitor")["spec"]["endpoints"][0]["path"]
    with start_service(s3_server, tmp_path, [("a", 8, 0, 20.0)], ["a"], workers=1, env_overrides=service_env) as srv:
        with httpx.Client(base_url=srv.url, timeout=30.0) as c:
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                path = container[probe]["httpGet"]["path"]
                assert c.get(path).status_code == 200, (probe, path)
            assert srv.translate(c).status_code == 200  # so request metrics have samples
            metrics = c.get(sm_path)
            assert metrics.status_code == 200
            for name in ["pocketgan_model_swaps_total", *custom]:
                assert re.search(rf"^{name}[{{ ]", metrics.text, re.M), f"{name} not on {sm_path}"
            assert c.get("/no-such-probe").status_code == 404  # a wrong path would have been caught
