"""`bentoml build` for real, offline, into a temporary BENTOML_HOME; then the bento's contents.

Checks what a container built from it would get: bento.yaml (service, labels, envs), exactly the
service and registry sources (no compression_jobs, no tests), requirements that match
pyproject.toml and cover every third-party import of the included sources, that the service
imports from the bento's own `src/` alone, and that `bentoml list` / `bentoml get` see the bento.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
BENTOML = str(Path(sys.executable).with_name("bentoml"))
LOCAL_PACKAGES = {"service", "registry"}
# Imported lazily by registry.onnx_stats / registry.artifact for `publish` only (MACs from the graph,
# fp16 variants); the service never publishes, so the image does not need it. (registry/local_s3.py,
# the development S3, is not in the bento at all.)
NOT_NEEDED_BY_SERVICE = {"onnx"}
# The CPU wheel the image gets and the GPU wheel installed here provide the same `onnxruntime` module.
INSTALLED_AS = {"onnxruntime": "onnxruntime-gpu"}

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Build once: {'env', 'tag', 'dir'} of the new bento in a fresh BENTOML_HOME."""
    home = tmp_path_factory.mktemp("bentoml-home")
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "True"}
    proc = subprocess.run([BENTOML, "build", str(REPO), "-f", str(REPO / "bentofile.yaml"), "-o", "tag"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    tag = proc.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    name, version = tag.split(":")
    return {"env": env, "tag": tag, "dir": home / "bentos" / name / version}


def _requirement_lines(bento_dir: Path) -> list[Requirement]:
    lines = (bento_dir / "env" / "python" / "requirements.txt").read_text().splitlines()
    return [Requirement(line) for line in lines if line.strip() and not line.startswith(("#", "-"))]


def _closure(names: set[str]) -> set[str]:
    """The canonical names of `names` and everything they require (installed metadata, no extras)."""
    seen: set[str] = set()
    todo = [canonicalize_name(n) for n in names]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            if name in INSTALLED_AS:
                todo.append(INSTALLED_AS[name])
            continue
        for line in requires:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(canonicalize_name(req.name))
    return seen


def _third_party_imports(src: Path) -> dict[str, set[str]]:
    """Top-level modules imported anywhere (also inside functions) by the bento's Python files."""
    found: dict[str, set[str]] = {}
    for path in sorted(src.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                mods = [node.module]
            else:
                continue
            for mod in mods:
                top = mod.split(".")[0]
                if top not in sys.stdlib_module_names and top not in LOCAL_PACKAGES and top != "__future__":
                    found.setdefault(top, set()).add(str(path.relative_to(src)))
    return found


def test_bento_yaml(built: dict) -> None:
    info = yaml.safe_load((built["dir"] / "bento.yaml").read_text())
    assert f"{info['name']}:{info['version']}" == built["tag"]
    assert info["service"] == "service.service:PocketGAN"
    assert info["labels"]["project"] == "pocketgan"
    assert info["models"] == []  # generators come from the S3 registry at run time, not the bento
    assert {"name": "BENTOML_DO_NOT_TRACK", "value": "True"} in [
        {k: e[k] for k in ("name", "value")} for e in info["envs"]
    ]
    assert (built["dir"] / "env" / "docker" / "Dockerfile").is_file()


def test_bento_schema_lists_the_client_endpoints_and_bakes_no_serve_settings(built: dict) -> None:
    """BentoML's clients (and BentoCloud) read the routes from the bento's schema; workers and the
    timeout are read from settings when serving (the service tests serve 1 and 2 workers by env)."""
    info = yaml.safe_load((built["dir"] / "bento.yaml").read_text())
    routes = {r["name"]: r for r in info["schema"]["routes"]}
    assert set(routes) == {"translate", "resolve"}
    assert routes["translate"]["input"]["properties"]["image"]["type"] == "file"
    assert routes["translate"]["input"]["required"] == ["image", "task"]
    assert {"task", "hardware_tag", "latency_budget_ms", "format"} <= set(routes["resolve"]["input"]["properties"])
    stored = json.loads((built["dir"] / "apis" / "schema.json").read_text())
    assert [r["name"] for r in stored["routes"]] == ["translate", "resolve"]
    (svc,) = info["services"]
    assert svc["config"]["resources"] == {"cpu": "2", "memory": "2Gi"}
    assert "workers" not in svc["config"] and "traffic" not in svc["config"]
    openapi = yaml.safe_load((built["dir"] / "apis" / "openapi.yaml").read_text())
    assert "multipart/form-data" in openapi["paths"]["/translate"]["post"]["requestBody"]["content"]


def test_bento_holds_exactly_the_service_and_registry_sources(built: dict) -> None:
    src = built["dir"] / "src"
    got = {str(p.relative_to(src)) for p in src.rglob("*") if p.is_file()}
    want = {str(p.relative_to(REPO)) for pkg in LOCAL_PACKAGES for p in (REPO / pkg).glob("*.py")}
    want.discard("registry/local_s3.py")  # the development S3 server stays out of serving images
    assert got == want | {"bentofile.yaml"}
    for rel in want:  # byte-identical copies
        assert (src / rel).read_bytes() == (REPO / rel).read_bytes(), rel


def test_requirements_match_pyproject_and_cover_imports(built: dict) -> None:
    reqs = _requirement_lines(built["dir"])
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    declared = {canonicalize_name(r.name): r for r in map(Requirement, pyproject["project"]["dependencies"])}
    listed = {canonicalize_name(r.name) for r in reqs}
    assert "torch" not in listed and "onnx" not in listed, "the service image must not carry training deps"
    for req in reqs:
        name = canonicalize_name(req.name)
        if name == "bentoml" and str(req.specifier).startswith("=="):
            continue  # the exact pin bentoml adds for its own version
        assert name in declared, f"{req} is not a runtime dependency in pyproject.toml"
        assert req.specifier == declared[name].specifier, f"bentofile {req} != pyproject {declared[name]}"

    closure = _closure(listed)
    provided = {mod for mod, dists in metadata.packages_distributions().items()
                if any(canonicalize_name(d) in closure for d in dists)}
    missing = {
        mod: files for mod, files in _third_party_imports(built["dir"] / "src").items()
        if mod not in provided and mod not in NOT_NEEDED_BY_SERVICE
    }
    assert not missing, f"imported by the bento's sources but not installed by its requirements: {missing}"


def test_service_imports_from_the_bento_source_alone(built: dict) -> None:
    src = built["dir"] / "src"
    code = (
        "import json, sys, service.service as s; "
        "print(json.dumps({'file': s.__file__, 'mods': sorted({m.split('.')[0] for m in sys.modules})}))"
    )
    env = {**built["env"], "PYTHONPATH": str(src)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=src, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert Path(out["file"]).resolve().is_relative_to(src.resolve())
    assert "compression_jobs" not in out["mods"] and "torch" not in out["mods"]


def test_bentoml_list_and_get_see_it(built: dict) -> None:
    listed = subprocess.run([BENTOML, "list", "-o", "json"], env=built["env"], capture_output=True, text=True,
                            timeout=120, check=True)
    assert built["tag"] in [b["tag"] for b in json.loads(listed.stdout)]
    got = subprocess.run([BENTOML, "get", built["tag"], "-o", "json"], env=built["env"], capture_output=True,
                         text=True, timeout=120, check=True)
    info = json.loads(got.stdout)
    assert f"{info['name']}:{info['version']}" == built["tag"]
    assert info["service"] == "service.service:PocketGAN"
