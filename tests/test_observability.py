"""Observability in deploy/: promtool checks and unit tests of the rules, the dashboard's structure,
the load generator's guard rails, and one end-to-end run: a real Prometheus (Debian binary) with
the shipped config and rules scrapes a real `bentoml serve` under benchmarks/load.py while a new
set is promoted; then every PromQL expression of the Grafana dashboard must return data.

promtool and prometheus come from the Debian package `prometheus` (scripts/setup installs it);
these tests fail, not skip, without them.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
import yaml

from _service_helpers import REPO, TASK, Server, free_port, start_service, stop_process_group

PROM_DIR = REPO / "deploy" / "prometheus"
DASHBOARD = REPO / "deploy" / "grafana" / "pocketgan-dashboard.json"
LOAD = REPO / "benchmarks" / "load.py"
# tiny generators; synthetic p95 at 64x64 (x4 at the 128x128 label maps the load sends):
# small 320 ms, large 80 ms, other 200 ms -> budgets 400/150/80 pick small/large/large, 20 ms fits none
ARTIFACTS = [("small", 8, 1, 80.0), ("large", 16, 2, 20.0), ("other", 12, 3, 50.0)]
# what Grafana substitutes: All for the multi-value variables, fixed intervals for the built-ins
GRAFANA_VARS = {"__rate_interval": "1m", "__interval": "15s", "__range": "5m", "task": TASK, "device_class": ".*"}

pytestmark = pytest.mark.timeout(300)


def _tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} not found: run scripts/setup (installs the Debian package 'prometheus')"
    return path


def _run(cmd: list[str], cwd: Path = PROM_DIR) -> str:
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
    return r.stdout


def test_promtool_check_rules_and_config() -> None:
    out = _run([_tool("promtool"), "check", "rules", "recording.yml", "alerts.yml"])
    assert "SUCCESS" in out
    _run([_tool("promtool"), "check", "config", "prometheus.yml"])


def test_promtool_unit_tests_for_alerts() -> None:
    tests = sorted(str(p.relative_to(PROM_DIR)) for p in (PROM_DIR / "tests").glob("*.yml"))
    assert tests, "no rule unit tests in deploy/prometheus/tests"
    out = _run([_tool("promtool"), "test", "rules", *tests])
    assert "SUCCESS" in out and "FAILED" not in out


def test_kubernetes_variant_matches_static_config() -> None:
    """Debian's Prometheus build leaves out Kubernetes discovery, so promtool cannot check this file;
    check that it scrapes the same job with the same rules instead."""
    static = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())
    k8s = yaml.safe_load((PROM_DIR / "prometheus-kubernetes.yml").read_text())
    assert k8s["rule_files"] == static["rule_files"]
    job = k8s["scrape_configs"][0]
    assert job["job_name"] == static["scrape_configs"][0]["job_name"] == "pocketgan"
    assert job["kubernetes_sd_configs"] == [{"role": "pod"}]
    assert any(r.get("action") == "keep" and r.get("regex") == "pocketgan" for r in job["relabel_configs"])


def _dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def dashboard_queries(dash: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, expr) for every panel target, annotation and template variable query."""
    out = []
    for p in dash["panels"]:
        for t in p.get("targets", []):
            out.append((f"panel {p['id']} '{p['title']}' {t['refId']}", t["expr"]))
    for a in dash["annotations"]["list"]:
        if "expr" in a:
            out.append((f"annotation '{a['name']}'", a["expr"]))
    for v in dash["templating"]["list"]:
        if v["type"] == "query":
            m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", v["query"]["query"])
            assert m, f"variable {v['name']}: unsupported query {v['query']['query']}"
            out.append((f"variable ${v['name']}", f"count by ({m.group(2)}) ({m.group(1)})"))
    return out


def substitute(expr: str) -> str:
    def one(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        assert name in GRAFANA_VARS, f"unknown dashboard variable ${name} in {expr}"
        return GRAFANA_VARS[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", one, expr)


def test_dashboard_structure() -> None:
    dash = _dashboard()
    names = {v["name"]: v for v in dash["templating"]["list"]}
    assert names["datasource"]["type"] == "datasource" and names["datasource"]["query"] == "prometheus"
    assert names["task"]["type"] == "query" and "device_class" in names
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    panels = [p for p in dash["panels"] if p["type"] != "row"]
    assert len(panels) >= 10
    for p in panels:
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["targets"] and all(t["datasource"]["uid"] == "${datasource}" for t in p["targets"]), p["title"]
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24 and g["h"] > 0, p["title"]
    exprs = " ".join(e for _, e in dashboard_queries(dash))
    for needed in ("$task", "$device_class", "pocketgan_expected_duration_seconds", "burn_rate", "pocketgan_selections_total",
                   "pocketgan_loaded_artifact_info", "registry_seconds_since_last_successful_poll", "poll_errors"):
        assert needed in exprs, needed
    for _, e in dashboard_queries(dash):
        substitute(e)  # every variable is one the test (and Grafana) knows
    prov = REPO / "deploy" / "grafana" / "provisioning"
    ds = yaml.safe_load((prov / "datasources" / "pocketgan-prometheus.yml").read_text())["datasources"][0]
    assert ds["type"] == "prometheus" and ds["isDefault"] is True
    dp = yaml.safe_load((prov / "dashboards" / "pocketgan.yml").read_text())["providers"][0]
    assert dp["type"] == "file" and dp["options"]["path"]


def _load_module():
    spec = importlib.util.spec_from_file_location("pocketgan_load", LOAD)
    mod = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(mod)
    return mod


def test_load_generator_is_loopback_only(capsys: pytest.CaptureFixture[str]) -> None:
    load = _load_module()
    assert load.is_loopback("http://127.0.0.1:3000") and load.is_loopback("http://localhost:3000")
    assert not load.is_loopback("http://10.20.30.40:3000")
    assert load.main(["--url", "http://10.20.30.40:3000", "--duration", "1"]) == 2
    assert "not a loopback address" in capsys.readouterr().err
    assert load.main(["--url", "ftp://127.0.0.1/", "--duration", "1"]) == 2
    images = load.label_maps("png")
    assert len(images) >= 8 and all(b.startswith(b"\x89PNG") for b in images)


# -- end to end ------------------------------------------------------------------------------------


class Prometheus:
    def __init__(self, url: str, proc: subprocess.Popen, log: Path) -> None:
        self.url, self.proc, self.log = url, proc, log
        self.http = httpx.Client(base_url=url, timeout=10.0)

    def query(self, expr: str) -> list[dict[str, Any]]:
        r = self.http.get("/api/v1/query", params={"query": expr})
        body = r.json()
        if body.get("status") != "success":
            raise AssertionError(f"{body.get('errorType')}: {body.get('error')}")
        return body["data"]["result"]

    def tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-20:])


@pytest.fixture
def prometheus_for(tmp_path: Path) -> Iterator:
    """Factory: a real Prometheus on a random port scraping `target` every second, with the shipped
    scrape job (only the target and intervals changed) and rule files."""
    procs: list[subprocess.Popen] = []

    def start(target: str) -> Prometheus:
        cfg = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())
        cfg["global"].update({"scrape_interval": "1s", "evaluation_interval": "1s"})
        cfg["rule_files"] = [str(PROM_DIR / f) for f in cfg["rule_files"]]
        job = next(j for j in cfg["scrape_configs"] if j["job_name"] == "pocketgan")
        job["scrape_timeout"] = "1s"
        job["static_configs"] = [{"targets": [target], "labels": {"env": "test"}}]
        path = tmp_path / "prometheus.yml"
        path.write_text(yaml.safe_dump(cfg))
        port = free_port()
        log = tmp_path / "prometheus.log"
        with open(log, "wb") as fh:
            proc = subprocess.Popen(
                [_tool("prometheus"), f"--config.file={path}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=1h"],
                stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
            )
        procs.append(proc)
        prom = Prometheus(f"http://127.0.0.1:{port}", proc, log)
        deadline = time.monotonic() + 60
        while True:
            try:
                if prom.http.get("/-/ready").status_code == 200:
                    return prom
            except httpx.TransportError:
                pass
            assert proc.poll() is None, f"prometheus exited {proc.returncode}:\n{prom.tail()}"
            assert time.monotonic() < deadline, f"prometheus not ready:\n{prom.tail()}"
            time.sleep(0.2)

    yield start
    for proc in procs:
        stop_process_group(proc)


@pytest.fixture
def service(s3_server, tmp_path: Path) -> Iterator[Server]:
    # profile-only predictions (no observation correction) keep the budget mix deterministic
    with start_service(
        s3_server, tmp_path / "svc", ARTIFACTS, ["small", "large"], poll_s=1.0, workers=1, timeout_s=10.0,
        env_overrides={"POCKETGAN_SERVICE_MIN_OBSERVATIONS": "1000000", "POCKETGAN_SERVICE_MAX_CONCURRENCY": "16"},
    ) as srv:
        yield srv


def _wait(cond, timeout_s: float, what: str, detail=lambda: "") -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}\n{detail()}")
        time.sleep(0.3)


def test_every_dashboard_query_returns_data_under_load(service: Server, prometheus_for, tmp_path: Path) -> None:
    prom = prometheus_for(service.url.removeprefix("http://"))
    _wait(lambda: any(r["value"][1] == "1" for r in prom.query('up{job="pocketgan"}')), 30, "first scrape", prom.tail)

    report_path = tmp_path / "load.json"
    load = subprocess.Popen(
        [sys.executable, str(LOAD), "--url", service.url, "--duration", "12", "--max-requests", "5000",
         "--concurrency", "3", "--budgets", "default,20", "--json", str(report_path)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    out: list[str] = []
    reader = threading.Thread(target=lambda: out.append(load.stdout.read()), daemon=True)
    reader.start()
    other = service.artifacts["other"]
    with service.client() as c:
        # promote a new set mid-load: the swap must not fail a single request
        _wait(lambda: service.metric(c, "pocketgan_budget_total", task=TASK) >= 20, 60, "load to start", service.tail)
        swaps = service.metric(c, "pocketgan_model_swaps_total", task=TASK)
        service.registry.promote(TASK, "production", [other, service.artifacts["large"]], actor="pytest")
        _wait(lambda: service.metric(c, "pocketgan_model_swaps_total", task=TASK) > swaps, 30, "swap", service.tail)
    assert load.wait(timeout=120) == 0, out
    reader.join(timeout=10)
    print(out[0] if out else "")
    report = json.loads(report_path.read_text())
    assert report["requests"] > 0 and set(report["status"]) == {"200"}, report
    assert report["no_eligible"] > 0 and other in report["artifacts"], report

    # Prometheus has scraped the swapped set and evaluated the recording rules on it
    _wait(lambda: prom.query(f'task_artifact:pocketgan_selections:rate5m{{artifact="{other}"}}'), 30,
          "recording rules on post-swap data", prom.tail)

    failures = []
    queries = dashboard_queries(json.loads(DASHBOARD.read_text()))
    for where, expr in queries:
        try:
            if not prom.query(substitute(expr)):
                failures.append(f"{where}: no data for {substitute(expr)}")
        except AssertionError as exc:
            failures.append(f"{where}: {exc}")
    assert not failures, "dashboard queries without data:\n" + "\n".join(failures)
    print(f"{len(queries)} dashboard queries returned data")

    loaded = {r["metric"]["artifact"] for r in prom.query('pocketgan_loaded_artifact_info{job="pocketgan"} == 1')}
    assert loaded == {other, service.artifacts["large"]}

    groups = prom.http.get("/api/v1/rules").json()["data"]["groups"]
    shipped = {g["name"] for f in ("recording.yml", "alerts.yml") for g in yaml.safe_load((PROM_DIR / f).read_text())["groups"]}
    assert {g["name"] for g in groups} == shipped
    bad = [f"{r['name']}: {r['health']} {r.get('lastError', '')}" for g in groups for r in g["rules"] if r["health"] != "ok"]
    assert not bad, bad
    # 20 ms budgets fit no promoted artifact: the no-eligible alert is at least pending
    alerts = prom.http.get("/api/v1/alerts").json()["data"]["alerts"]
    assert any(a["labels"]["alertname"] == "PocketganNoEligibleModel" and a["state"] in ("pending", "firing") for a in alerts), alerts
