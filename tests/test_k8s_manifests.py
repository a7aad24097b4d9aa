"""The Kubernetes manifests in deploy/k8s: schemas (offline), cross-references, and the real service.

- every resource validates against the Kubernetes JSON schemas bundled by `kubernetes-validate`
  (strict: unknown fields are errors); the ServiceMonitor against the vendored CRD schema in
  deploy/k8s/schemas; broken copies must fail (so the validation really validates);
- names that must agree do: selectors and labels, port names, the HPA target, ConfigMap/Secret
  references, env variable names (they must exist in service/settings.py, registry/config.py or
  the service's own env reads), ConfigMap values (parsed by the real settings classes), the
  profile Job's arguments (parsed by the real `pocketgan profile` command);
- a real `bentoml serve`, configured with the ConfigMap's service settings, answers the
  probe paths and the scrape path, and exposes the HPA's custom metric;
- hardening (issue 12): read-only root filesystem with every writable path an emptyDir with a
  sizeLimit, no service-account token, CPU and memory limits, NetworkPolicies (ingress to the
  service port only from named namespaces, egress only to DNS and the ConfigMap's S3), each with
  broken copies that must be caught; and the real `bentoml serve` runs on a read-only root with
  only the Deployment's emptyDir paths writable (a private mount namespace; skipped where
  `unshare` is not permitted).
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import click
import httpx
import jsonschema
import kubernetes_validate
import pytest
import yaml

from _service_helpers import TASK, make_artifact, start_service

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "deploy" / "k8s"
K8S_VERSION = "1.30.0"  # oldest version we claim to support; autoscaling/v2 and policy/v1 are GA there
SERVICE_MONITOR_SCHEMA = K8S / "schemas" / "servicemonitor_v1.json"
BOTO3_ENV = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_DEFAULT_REGION"}
# variables read by libraries, set in the manifests to move their writes onto emptyDirs
LIBRARY_ENV = {
    "BENTOML_HOME": "BentoML: Prometheus multiprocess dir (and any other run-time files)",
    "TMPDIR": "Python tempfile: Starlette spools large uploads there",
    "CUDA_CACHE_PATH": "CUDA driver: kernel JIT cache (default ~/.nv, read-only here)",
}

pytestmark = pytest.mark.timeout(300)


def _kustomization() -> dict:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())


def _render(directory: Path) -> list[dict]:
    """Offline kustomize for what deploy/k8s uses: `resources` (files, or directories with their own
    kustomization), `components`, JSON 6902 `patches` with a kind (and name) target, `nameSuffix`.
    The top level's namespace, labels and images are left to the kubectl test, which also checks
    that this rendering of the profile Jobs matches kustomize's."""
    import jsonpatch

    k = yaml.safe_load((directory / "kustomization.yaml").read_text())
    docs: list[dict] = []
    for entry in k.get("resources", []):
        path = directory / entry
        docs += _render(path) if path.is_dir() else [d for d in yaml.safe_load_all(path.read_text()) if d]

    def patched(kustomization: dict, docs: list[dict]) -> list[dict]:
        for p in kustomization.get("patches", []):
            ops, target = yaml.safe_load(p["patch"]), p["target"]
            assert isinstance(ops, list), "only JSON 6902 patches are rendered offline"
            docs = [jsonpatch.apply_patch(d, ops) if d["kind"] == target["kind"]
                    and target.get("name", d["metadata"]["name"]) == d["metadata"]["name"] else d for d in docs]
        return docs

    for component in k.get("components", []):
        comp = yaml.safe_load((directory / component / "kustomization.yaml").read_text())
        assert comp["kind"] == "Component" and not comp.get("resources")
        docs = patched(comp, docs)
    docs = patched(k, docs)
    for d in docs:
        d["metadata"]["name"] = k.get("namePrefix", "") + d["metadata"]["name"] + k.get("nameSuffix", "")
    return docs


def _docs() -> list[dict]:
    return _render(K8S)


def _one(kind: str, docs: list[dict] | None = None) -> dict:
    found = [d for d in (docs or _docs()) if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def _jobs(docs: list[dict] | None = None) -> list[dict]:
    """The profile Jobs, one per device pool (deploy/k8s/profile)."""
    return [d for d in (docs or _docs()) if d["kind"] == "Job"]


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
    """The pod template of the Deployment, or of the first profile Job (the broken-copy cases)."""
    return (_jobs()[0] if kind == "Job" else _one(kind))["spec"]["template"]


def _pods(kind: str) -> list[dict]:
    return [j["spec"]["template"] for j in _jobs()] if kind == "Job" else [_pod(kind)]


# ----------------------------------------------------------------------------- schemas


def test_kustomization_lists_every_manifest() -> None:
    listed = set(_kustomization()["resources"])
    present = ({p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}) | {
        d.name for d in K8S.iterdir() if (d / "kustomization.yaml").is_file()}
    assert listed == present
    pools = yaml.safe_load((K8S / "profile" / "kustomization.yaml").read_text())["resources"]
    assert len(pools) >= 2 and {p.split("/")[0] for p in pools} == {"pools"}
    assert {p.name for p in (K8S / "profile" / "pools").iterdir()} == {p.split("/")[1] for p in pools}  # all listed
    kinds = sorted(d["kind"] for d in _docs())
    assert kinds == sorted(["Namespace", "ConfigMap", "Deployment", "Service", "HorizontalPodAutoscaler",
                            "PodDisruptionBudget", "ServiceMonitor", "NetworkPolicy", "NetworkPolicy", *["Job"] * len(pools)])


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
    # the profile Jobs' pods must not be picked up by the Service or the PDB
    for job in _pods("Job"):
        job_labels = job["metadata"]["labels"]
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

    names = set(BOTO3_ENV) | set(LIBRARY_ENV)
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
    for kind, pod in [(kind, pod) for kind in ("Deployment", "Job") for pod in _pods(kind)]:
        unknown = sorted(set(_env_names(pod, cm)) - allowed)
        assert not unknown, f"{kind}: env variables no code reads: {unknown}"
        for c in pod["spec"]["containers"]:
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:  # the Secret is created by the operator (not in git); its recipe must be documented
                    assert ref["key"] == e["name"] and f"--from-literal={ref['key']}=" in container_md
                    assert f"create secret generic {ref['name']}" in container_md


def test_api_keys_are_required_in_the_cluster() -> None:
    """/translate and /resolve take keys in the cluster: the digests come from a Secret that is not optional."""
    env = {e["name"]: e for e in _pod("Deployment")["spec"]["containers"][0]["env"]}
    ref = env["POCKETGAN_SERVICE_API_KEY_HASHES"]["valueFrom"]["secretKeyRef"]
    assert ref["name"] == "pocketgan-api-keys" and not ref.get("optional", False)
    assert "POCKETGAN_SERVICE_API_KEY_HASHES" not in _one("ConfigMap")["data"], "keys belong in a Secret"


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
    cpu_limit = int(_pod("Deployment")["spec"]["containers"][0]["resources"]["limits"]["cpu"])
    assert svc.workers * svc.inference_threads * svc.intra_op_threads == cpu_limit, "thread rule: one job per core"
    mounts = {m["mountPath"] for m in _pod("Deployment")["spec"]["containers"][0]["volumeMounts"]}
    assert data["POCKETGAN_CACHE_DIR"] in mounts, "the registry cache must be on a writable volume"


def test_profile_job_runs_a_real_pocketgan_profile_command() -> None:
    from compression_jobs.cli import profile_cli
    from pocketgan.cli import cli as pocketgan_cli
    from registry.names import validate_name

    assert pocketgan_cli.get_command(click.Context(pocketgan_cli), "profile") is profile_cli
    jobs = _jobs()
    assert len({j["metadata"]["name"] for j in jobs}) == len(jobs) >= 2
    tags = set()
    for job in jobs:
        pod = job["spec"]["template"]
        c = pod["spec"]["containers"][0]
        assert c["command"] == ["pocketgan"] and c["args"][0] == "profile"
        ctx = profile_cli.make_context("profile", list(c["args"][1:]))
        assert ctx.params["promoted"] and ctx.params["task"] == TASK
        tag, provider = validate_name(ctx.params["hardware_tag"], "hardware tag"), ctx.params["provider"]
        tags.add(tag)
        assert job["metadata"]["name"].startswith("pocketgan-profile-")
        assert pod["spec"]["nodeSelector"] and pod["spec"]["restartPolicy"] == "Never"
        on_gpu = provider == "CUDAExecutionProvider"
        # the tag names the device the session runs on (profile refuses a mismatch, exit 9)
        assert provider in ("CUDAExecutionProvider", "CPUExecutionProvider") and tag.startswith("cuda-" if on_gpu else "cpu-")
        assert ("nvidia.com/gpu" in c["resources"]["limits"]) == on_gpu == bool(pod["spec"].get("tolerations"))
        assert c["image"] == ("pocketgan-jobs-gpu" if on_gpu else "pocketgan-jobs")
    assert len(tags) == len(jobs)  # one Job per pool, each with its own tag


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
    # the offline rendering the other tests check is what kustomize renders (image names aside)
    offline = {j["metadata"]["name"]: j["spec"] for j in _jobs()}
    by_kubectl = {d["metadata"]["name"]: copy.deepcopy(d["spec"]) for d in rendered if d["kind"] == "Job"}
    for spec in by_kubectl.values():
        for c in spec["template"]["spec"]["containers"]:
            c["image"] = next(i["name"] for i in _kustomization()["images"] if c["image"] == f"{i['newName']}:{i['newTag']}")
    assert by_kubectl == offline


# ----------------------------------------------------------------------------- hardening

# env variables whose value is a path the process writes to: each must lie on an emptyDir
WRITABLE_ENV = {
    "Deployment": ("POCKETGAN_CACHE_DIR", "BENTOML_HOME", "TMPDIR"),
    "Job": ("POCKETGAN_CACHE_DIR", "TMPDIR", "CUDA_CACHE_PATH"),
}


def _env_value(container: dict, configmap: dict, name: str) -> str | None:
    for e in container.get("env", []):
        if e["name"] == name:
            return e.get("value")
    if container.get("envFrom"):
        return configmap["data"].get(name)
    return None


def _on(path: str, mounts: list[str]) -> bool:
    return any(path == m or path.startswith(m.rstrip("/") + "/") for m in mounts)


def _hardening_problems(pod: dict, configmap: dict, writable_env: tuple[str, ...]) -> list[str]:
    """What keeps a pod template from the hardening rules (empty list: none)."""
    problems = []
    spec = pod["spec"]
    if spec.get("automountServiceAccountToken") is not False:
        problems.append("service-account token is mounted")
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    for name, v in volumes.items():
        if set(v) != {"name", "emptyDir"}:
            problems.append(f"volume {name} is not an emptyDir")
        elif not v["emptyDir"].get("sizeLimit"):
            problems.append(f"emptyDir {name} has no sizeLimit")
    for c in spec["containers"]:
        sc = c.get("securityContext", {})
        if sc.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{c['name']}: root filesystem is writable")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{c['name']}: privilege escalation allowed")
        if sc.get("capabilities", {}).get("drop") != ["ALL"]:
            problems.append(f"{c['name']}: capabilities not all dropped")
        resources = c.get("resources", {})
        for kind, resource in (("limits", "cpu"), ("limits", "memory"), ("requests", "cpu"), ("requests", "memory")):
            if resource not in resources.get(kind, {}):
                problems.append(f"{c['name']}: no {resource} {kind[:-1]}")
        mounts = []
        for m in c.get("volumeMounts", []):
            if m["name"] not in volumes:
                problems.append(f"{c['name']}: mount {m['mountPath']} of an undeclared volume")
            else:
                mounts.append(m["mountPath"])
        if "/tmp" not in mounts:
            problems.append(f"{c['name']}: /tmp is not an emptyDir")
        for name in writable_env:
            value = _env_value(c, configmap, name)
            if value is None:
                problems.append(f"{c['name']}: {name} is not set")
            elif not _on(value, mounts):
                problems.append(f"{c['name']}: {name}={value} is not on an emptyDir")
    return problems


@pytest.mark.parametrize("kind", sorted(WRITABLE_ENV))
def test_pods_are_hardened(kind: str) -> None:
    for pod in _pods(kind):
        assert _hardening_problems(pod, _one("ConfigMap"), WRITABLE_ENV[kind]) == []


def _broken_hardening() -> list[tuple[str, str, dict, str]]:
    """(what, kind, broken pod template, expected problem) for the hardening checker."""
    cases = []

    def case(what: str, kind: str, expected: str, edit) -> None:  # noqa: ANN001 - edit(pod) mutates a copy
        pod = copy.deepcopy(_pod(kind))
        edit(pod)
        cases.append((what, kind, pod, expected))

    c0 = lambda pod: pod["spec"]["containers"][0]  # noqa: E731
    case("writable root", "Deployment", "root filesystem is writable",
         lambda p: c0(p)["securityContext"].update(readOnlyRootFilesystem=False))
    case("token mounted", "Deployment", "service-account token", lambda p: p["spec"].pop("automountServiceAccountToken"))
    case("token mounted (job)", "Job", "service-account token",
         lambda p: p["spec"].update(automountServiceAccountToken=True))
    case("emptyDir without sizeLimit", "Deployment", "has no sizeLimit",
         lambda p: p["spec"]["volumes"][0].update(emptyDir={}))
    case("hostPath volume", "Job", "is not an emptyDir",
         lambda p: p["spec"]["volumes"][0].update(emptyDir=None, hostPath={"path": "/var/cache"}) or
         p["spec"]["volumes"][0].pop("emptyDir"))
    case("no CPU limit", "Deployment", "no cpu limit", lambda p: c0(p)["resources"]["limits"].pop("cpu"))
    case("no CPU limit (job)", "Job", "no cpu limit", lambda p: c0(p)["resources"]["limits"].pop("cpu"))
    case("BENTOML_HOME inside the image", "Deployment", "BENTOML_HOME=/home/bentoml/ is not on an emptyDir",
         lambda p: next(e for e in c0(p)["env"] if e["name"] == "BENTOML_HOME").update(value="/home/bentoml/"))
    case("BENTOML_HOME unset", "Deployment", "BENTOML_HOME is not set",
         lambda p: c0(p).update(env=[e for e in c0(p)["env"] if e["name"] != "BENTOML_HOME"]))
    case("no /tmp emptyDir", "Job", "/tmp is not an emptyDir",
         lambda p: c0(p).update(volumeMounts=[m for m in c0(p)["volumeMounts"] if m["mountPath"] != "/tmp"]))
    case("privilege escalation", "Job", "privilege escalation",
         lambda p: c0(p)["securityContext"].pop("allowPrivilegeEscalation"))
    return cases


@pytest.mark.parametrize("what,kind,pod,expected", _broken_hardening(), ids=[c[0] for c in _broken_hardening()])
def test_unhardened_pod_is_caught(what: str, kind: str, pod: dict, expected: str) -> None:
    problems = _hardening_problems(pod, _one("ConfigMap"), WRITABLE_ENV[kind])
    assert any(expected in p for p in problems), problems


def _s3_destination(configmap: dict) -> tuple[str, int]:
    """(namespace, port) of the in-cluster S3 in POCKETGAN_S3_ENDPOINT (http://<svc>.<namespace>.svc:<port>)."""
    url = urlsplit(configmap["data"]["POCKETGAN_S3_ENDPOINT"])
    parts = (url.hostname or "").split(".")
    assert len(parts) >= 3 and parts[2] == "svc", f"not an in-cluster service address: {url.hostname}"
    return parts[1], url.port or (443 if url.scheme == "https" else 80)


def _namespaces(peers: list[dict]) -> set[str | None]:
    return {p.get("namespaceSelector", {}).get("matchLabels", {}).get("kubernetes.io/metadata.name") for p in peers}


def _network_problems(policy: dict, served_ports: dict[str, int] | None, s3: tuple[str, int]) -> list[str]:
    """What lets more through `policy` than the pod needs. `served_ports`: container ports by name
    (None: the pod serves nothing, so no ingress at all)."""
    problems = []
    spec = policy["spec"]
    if sorted(spec.get("policyTypes", [])) != ["Egress", "Ingress"]:
        problems.append("policy does not restrict both Ingress and Egress")
    covered = set()
    for rule in spec.get("ingress", []):
        if served_ports is None:
            problems.append("ingress allowed to a pod that serves nothing")
            continue
        if not rule.get("from"):
            problems.append("ingress rule open to every source")
        for peer in rule.get("from", []):
            if "ipBlock" in peer or not (peer.get("namespaceSelector", {}).get("matchLabels") or peer.get("podSelector")):
                problems.append(f"ingress from too wide a source: {peer}")
        if not rule.get("ports"):
            problems.append("ingress rule open on every port")
        for port in rule.get("ports", []):
            name = next((n for n, num in served_ports.items() if port["port"] in (n, num)), None)
            if name is None:
                problems.append(f"ingress to port {port['port']}, which the pod does not serve")
            covered.add(name)
    if served_ports is not None and set(served_ports) - covered:
        problems.append(f"container ports nobody may reach: {sorted(set(served_ports) - covered)}")
    allowed = set()
    for rule in spec.get("egress", []):
        ports = {(p.get("protocol", "TCP"), p.get("port")) for p in rule.get("ports", [])}
        namespaces = _namespaces(rule.get("to", []))
        if not rule.get("to") or not ports:
            problems.append(f"egress rule open to every destination or port: {rule}")
        elif ports <= {("UDP", 53), ("TCP", 53)} and namespaces == {"kube-system"}:
            allowed.add("dns")
        elif ports == {("TCP", s3[1])} and namespaces == {s3[0]}:
            allowed.add("s3")
        else:
            problems.append(f"egress to something other than DNS or the S3 endpoint: {rule}")
    if allowed != {"dns", "s3"}:
        problems.append(f"egress must allow DNS and S3, allows {sorted(allowed)}")
    return problems


def _policies_selecting(labels: dict, docs: list[dict] | None = None) -> list[dict]:
    return [d for d in (docs or _docs()) if d["kind"] == "NetworkPolicy" and _selects(d["spec"]["podSelector"], labels)]


def test_network_policies_allow_only_what_the_pods_need() -> None:
    docs = _docs()
    s3 = _s3_destination(_one("ConfigMap", docs))
    for kind, pod in [(kind, pod) for kind in ("Deployment", "Job") for pod in _pods(kind)]:
        policies = _policies_selecting(pod["metadata"]["labels"], docs)
        assert len(policies) == 1, f"{kind}: {len(policies)} NetworkPolicies select its pods"
        ports = pod["spec"]["containers"][0].get("ports")
        served = {p["name"]: p["containerPort"] for p in ports} if ports else None
        assert (served is None) == (kind == "Job")
        assert _network_problems(policies[0], served, s3) == [], kind


def _broken_network() -> list[tuple[str, str, dict, tuple[str, int] | None, str]]:
    docs = _docs()
    service = _policies_selecting(_pod("Deployment")["metadata"]["labels"], docs)[0]
    job = _policies_selecting(_pod("Job")["metadata"]["labels"], docs)[0]
    cases = []

    def case(what: str, base: dict, expected: str, edit, s3: tuple[str, int] | None = None) -> None:  # noqa: ANN001
        policy = copy.deepcopy(base)
        edit(policy["spec"])
        cases.append((what, "Deployment" if base is service else "Job", policy, s3, expected))

    case("ingress from anywhere", service, "open to every source", lambda s: s["ingress"][0].pop("from"))
    case("ingress from every namespace", service, "too wide a source",
         lambda s: s["ingress"][0]["from"].append({"namespaceSelector": {}}))
    case("ingress on every port", service, "open on every port", lambda s: s["ingress"][0].pop("ports"))
    case("ingress to a port not served", service, "does not serve",
         lambda s: s["ingress"][0]["ports"].append({"protocol": "TCP", "port": 9090}))
    case("ingress to the job", job, "serves nothing", lambda s: s.update(ingress=[{"from": [{"podSelector": {}}]}]))
    case("egress anywhere", service, "open to every destination", lambda s: s["egress"].append({}))
    case("egress to the internet", job, "other than DNS or the S3",
         lambda s: s["egress"].append({"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}], "ports": [{"port": 443}]}))
    case("no egress policy type", service, "both Ingress and Egress", lambda s: s.update(policyTypes=["Ingress"]))
    case("S3 moved (ConfigMap endpoint on another port)", service, "other than DNS or the S3", lambda s: None,
         s3=("storage", 9000))
    case("no DNS", job, "must allow DNS and S3", lambda s: s["egress"].pop(0))
    return cases


@pytest.mark.parametrize("what,kind,policy,s3,expected", _broken_network(), ids=[c[0] for c in _broken_network()])
def test_too_open_network_policy_is_caught(what: str, kind: str, policy: dict, s3, expected: str) -> None:  # noqa: ANN001
    _validate(policy)  # still a valid resource: only the rule checker can catch it
    ports = _pod(kind)["spec"]["containers"][0].get("ports")
    served = {p["name"]: p["containerPort"] for p in ports} if ports else None
    problems = _network_problems(policy, served, s3 or _s3_destination(_one("ConfigMap")))
    assert any(expected in p for p in problems), problems


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


# Run a command on a read-only view of this machine: in a private mount namespace every mount is
# remounted read-only except the directories in $RO_ROOT_WRITABLE (bind-mounted onto themselves
# first, so they stay writable and the test can look at what was written). $RO_ROOT_PROBE, a path
# outside them, must not be writable, or the view is not read-only and the run stops (exit 97).
RO_ROOT_SCRIPT = r"""
set -eu
for d in $RO_ROOT_WRITABLE; do mount --bind "$d" "$d"; done
awk '{print $2}' /proc/self/mounts | sort -u | while read -r mp; do
  case "$mp" in /proc|/proc/*|/sys|/sys/*|/dev|/dev/*) continue ;; esac
  case " $RO_ROOT_WRITABLE " in *" $mp "*) continue ;; esac
  mount -o remount,bind,ro "$mp" 2>/dev/null || true
done
if touch "$RO_ROOT_PROBE" 2>/dev/null; then echo "root filesystem still writable" >&2; exit 97; fi
exec "$@"
"""


def _read_only_runner(tmp_path: Path) -> list[str] | None:
    """`unshare` prefix that can build the read-only view here (root, or an unprivileged user namespace)."""
    if shutil.which("unshare") is None:
        return None
    writable, probe = tmp_path / "probe-w", tmp_path / "probe-ro"
    writable.mkdir()
    for prefix in (["unshare", "-m", "--propagation", "private"], ["unshare", "-r", "-m", "--propagation", "private"]):
        check = subprocess.run(
            [*prefix, "sh", "-c", RO_ROOT_SCRIPT, "sh", "touch", str(writable / "ok")],
            env={"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "RO_ROOT_WRITABLE": str(writable),
                 "RO_ROOT_PROBE": str(probe)},
            capture_output=True, timeout=30, check=False,
        )
        if check.returncode == 0 and (writable / "ok").exists() and not probe.exists():
            return prefix
    return None


def test_service_runs_on_a_read_only_root_with_only_the_deployments_emptydirs_writable(
    s3_server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real `bentoml serve` (as in the pod: ConfigMap settings, the Deployment's env) with every
    path read-only except stand-ins for the Deployment's emptyDirs: it becomes ready, translates,
    serves /metrics, writes its Prometheus files under BENTOML_HOME, and logs no read-only error."""
    import service.cli

    runner = _read_only_runner(tmp_path)
    if runner is None:
        pytest.skip("cannot build a read-only view here (`unshare -m` not permitted)")
    pod = _pod("Deployment")
    container = pod["spec"]["containers"][0]
    cm = _one("ConfigMap")
    stand_in = _emptydir_stand_ins(pod, tmp_path)

    def mapped(value: str) -> str:
        mount = max((mp for mp in stand_in if _on(value, [mp])), key=len)
        return str(stand_in[mount]) + value[len(mount.rstrip("/")):]

    env = {k: v for k, v in cm["data"].items() if k.startswith("POCKETGAN_SERVICE_")}
    env["POCKETGAN_SERVICE_POLL_INTERVAL_S"] = "1"
    env.update({name: mapped(_env_value(container, cm, name)) for name in WRITABLE_ENV["Deployment"]})
    env["RO_ROOT_WRITABLE"] = " ".join(str(d) for d in stand_in.values())
    env["RO_ROOT_PROBE"] = str(tmp_path / "probe-service")
    original = service.cli.serve_command
    monkeypatch.setattr(service.cli, "serve_command",
                        lambda port, host: [*runner, "sh", "-c", RO_ROOT_SCRIPT, "sh", *original(port, host)])
    with start_service(s3_server, tmp_path, [("a", 8, 0, 20.0)], ["a"], workers=1, env_overrides=env) as srv:
        with httpx.Client(base_url=srv.url, timeout=30.0) as c:
            assert c.get("/readyz").status_code == 200
            assert srv.translate(c).status_code == 200
            assert c.get("/metrics").status_code == 200
        log = srv.log.read_text(errors="replace")
    assert not (tmp_path / "probe-service").exists()
    assert "Read-only file system" not in log and "EROFS" not in log, log[-3000:]
    bentoml_home = Path(env["BENTOML_HOME"])
    assert any((bentoml_home / "prometheus_multiproc_dir").iterdir()), "BentoML did not write under BENTOML_HOME"
    cache = Path(env["POCKETGAN_CACHE_DIR"])
    assert any(cache.rglob("model.onnx")), "the model cache is not where POCKETGAN_CACHE_DIR points"


def _emptydir_stand_ins(pod: dict, tmp_path: Path) -> dict[str, Path]:
    """Container mount path -> a fresh directory here, for every emptyDir the container mounts."""
    volumes = {v["name"] for v in pod["spec"]["volumes"] if "emptyDir" in v}
    stand_in = {}
    for m in pod["spec"]["containers"][0]["volumeMounts"]:
        assert m["name"] in volumes
        stand_in[m["mountPath"]] = tmp_path / f"emptydir-{m['name']}"
        stand_in[m["mountPath"]].mkdir()
    return stand_in


def test_profile_job_runs_on_a_read_only_root_with_only_its_emptydirs_writable(
    registry, registry_env, tmp_path: Path
) -> None:
    """The Job's own `pocketgan profile` arguments (CPU provider, tiny sizes instead of CUDA and 256/512)
    with every path read-only except stand-ins for the Job's emptyDirs: it profiles the promoted set
    and writes the profile to S3, its cache lands on the cache emptyDir, no read-only error."""
    runner = _read_only_runner(tmp_path)
    if runner is None:
        pytest.skip("cannot build a read-only view here (`unshare -m` not permitted)")
    pod = _pod("Job")
    container, cm = pod["spec"]["containers"][0], _one("ConfigMap")
    stand_in = _emptydir_stand_ins(pod, tmp_path)

    def mapped(value: str) -> str:
        mount = max((mp for mp in stand_in if _on(value, [mp])), key=len)
        return str(stand_in[mount]) + value[len(mount.rstrip("/")):]

    art, manifest, _ = make_artifact(tmp_path / "artifacts", 8, 0, None)
    registry.publish_dir(art)
    registry.promote(TASK, "production", [manifest.artifact_id])
    args, replace = [], {"--provider": "CPUExecutionProvider", "--resolution": "16", "--runs": "2",
                         "--hardware-tag": "cpu-read-only-test"}  # a cuda-* tag on the CPU is refused (exit 9)
    for i, a in enumerate(container["args"]):
        prev = container["args"][i - 1] if i else None
        args.append(replace.get(prev, a))
    args += ["--warmup", "0", "--threads", "1"]
    hardware_tag = args[args.index("--hardware-tag") + 1]
    env = {**registry_env, **{name: mapped(_env_value(container, cm, name)) for name in WRITABLE_ENV["Job"]}}
    env["RO_ROOT_WRITABLE"] = " ".join(str(d) for d in stand_in.values())
    env["RO_ROOT_PROBE"] = str(tmp_path / "probe-job")
    run = subprocess.run([*runner, "sh", "-c", RO_ROOT_SCRIPT, "sh", sys.executable, "-m", "pocketgan", *args],
                         env=env, capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Read-only file system" not in run.stderr + run.stdout, run.stderr[-3000:]
    assert not (tmp_path / "probe-job").exists()
    assert [m.artifact_id for m in registry.list(hardware_tag=hardware_tag)] == [manifest.artifact_id]
    assert any(Path(env["POCKETGAN_CACHE_DIR"]).rglob("model.onnx"))
