"""`POST /translate` skips BentoML's inner layers (service.service.TranslateFastPath) but keeps its request
metrics, access log and tracing. The behaviour of the route itself is covered by the real-server tests
(test_service_http, test_service_abuse, test_service_trust), which all go through this path."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def service_log(caplog: pytest.LogCaptureFixture) -> Any:
    """The service's logger does not propagate (it has its own stderr handler): listen to it directly."""
    logger = logging.getLogger("pocketgan.service")
    logger.addHandler(caplog.handler)
    yield caplog
    logger.removeHandler(caplog.handler)


WIRING = """
import json, os
from service.service import PocketGAN, TranslateFastPath
out = {}
for tracing, access in (("false", "true"), ("true", "true"), ("false", "false")):
    os.environ["POCKETGAN_SERVICE_TRACING"] = tracing
    os.environ["POCKETGAN_SERVICE_ACCESS_LOG"] = access
    specs = PocketGAN.to_asgi(is_main=True).app.user_middleware
    fast = next(m for m in specs if m.cls is TranslateFastPath)
    wrapped = fast.kwargs["access_log"]
    out[tracing + "/" + access] = {"order": [m.cls.__name__ for m in specs],
                                   "access_log": wrapped.cls.__name__ if wrapped else None}
print(json.dumps(out))
"""


def test_bentoml_builds_the_fast_path_inside_its_metrics_and_tracing(tmp_path: Path) -> None:
    """Against the installed BentoML (a subprocess: building the app sets BentoML's global config). If an
    upgrade changes its middleware list, this fails instead of /translate silently taking the slow path."""
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "bentoml"), "BENTOML_DO_NOT_TRACK": "True",
           "POCKETGAN_REGISTRY": "s3://bucket/registry", "POCKETGAN_SERVICE_TASKS": '["facades-label2photo"]'}
    proc = subprocess.run([sys.executable, "-c", WIRING], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    default, traced, no_log = got["false/true"], got["true/true"], got["false/false"]
    # tracing off: right inside the request metrics; OTel (excluded for /translate anyway), timeout, context skipped
    assert default["order"][:2] == ["RunnerTrafficMetricsMiddleware", "TranslateFastPath"]
    assert default["access_log"] == "AccessLogMiddleware"  # BentoML's own class wraps the route: same lines
    # tracing on: spans still made (after OpenTelemetryMiddleware)
    i = traced["order"].index("OpenTelemetryMiddleware")
    assert traced["order"][i + 1] == "TranslateFastPath" and traced["order"][0] == "RunnerTrafficMetricsMiddleware"
    assert no_log["access_log"] is None and "AccessLogMiddleware" not in no_log["order"]
    assert "POST /translate: fast path after RunnerTrafficMetricsMiddleware" in proc.stderr


def test_an_unknown_middleware_list_keeps_the_full_stack(service_log: pytest.LogCaptureFixture) -> None:
    from service.service import TranslateFastPath, install_translate_fast_path

    bare = Starlette()  # no BentoML middlewares: nothing to anchor on
    assert not install_translate_fast_path(bare, tracing=False)
    assert bare.user_middleware == [] and "full middleware stack" in service_log.text

    class RunnerTrafficMetricsMiddleware:  # the anchor's name, but the app already serves: too late to insert
        def __init__(self, app: Any) -> None:
            self.app = app

    started = Starlette(middleware=[Middleware(RunnerTrafficMetricsMiddleware)])
    started.middleware_stack = started.build_middleware_stack()
    assert not install_translate_fast_path(started, tracing=False)
    fresh = Starlette(middleware=[Middleware(RunnerTrafficMetricsMiddleware)])
    assert install_translate_fast_path(fresh, tracing=False)
    assert [m.cls for m in fresh.user_middleware] == [RunnerTrafficMetricsMiddleware, TranslateFastPath]
    assert not install_translate_fast_path(Starlette(), tracing=True)  # tracing on needs the OTel anchor


def _call(app: Any, method: str, path: str) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "headers": [], "query_string": b"", "state": {}}
    asyncio.run(app(scope, receive, send))
    return sent


def test_only_post_translate_is_diverted_and_a_bug_is_a_bare_500(monkeypatch: pytest.MonkeyPatch,
                                                               service_log: pytest.LogCaptureFixture) -> None:
    import bentoml

    from service.service import TranslateFastPath

    inner: list[str] = []

    async def rest(scope: Any, receive: Any, send: Any) -> None:
        inner.append(f"{scope['method']} {scope['path']}")

    class Broken:
        async def translate(self, request: Any) -> Any:
            raise RuntimeError("secret at /srv/models/key.onnx")

    monkeypatch.setattr(bentoml, "get_current_service", lambda: Broken())
    fast = TranslateFastPath(rest)
    for method, path in (("GET", "/translate"), ("POST", "/resolve"), ("GET", "/models")):
        assert _call(fast, method, path) == []
    assert inner == ["GET /translate", "POST /resolve", "GET /models"]

    start, body = _call(fast, "POST", "/translate")
    assert start["status"] == 500 and inner == ["GET /translate", "POST /resolve", "GET /models"]
    assert json.loads(body["body"]) == {"error": "internal error", "reason": "internal_error"}
    assert "secret" in service_log.text  # the details go to the log only


def test_the_access_log_middleware_given_wraps_the_route(monkeypatch: pytest.MonkeyPatch) -> None:
    import bentoml
    from fastapi.responses import Response

    from service.service import TranslateFastPath

    seen: list[tuple[str, Any]] = []

    class Logged:  # stands for BentoML's AccessLogMiddleware: built with the options BentoML was given
        def __init__(self, app: Any, **options: Any) -> None:
            self.app, self.options = app, options

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            seen.append(("logged", self.options))
            await self.app(scope, receive, send)

    class Ok:
        async def translate(self, request: Any) -> Any:
            return Response(b"img", media_type="image/png")

    monkeypatch.setattr(bentoml, "get_current_service", lambda: Ok())
    fast = TranslateFastPath(None, access_log=Middleware(Logged, skip_paths=["/livez"]))
    start, body = _call(fast, "POST", "/translate")
    assert start["status"] == 200 and body["body"] == b"img"
    assert seen == [("logged", {"skip_paths": ["/livez"]})]
