"""BentoML's own clients and the OpenAPI document, against a real `bentoml serve` (1 worker) and the real S3.

- `bentoml.SyncHTTPClient` / `AsyncHTTPClient` call `translate` and `resolve` by name (the routes they
  read from `/schema.json`), with the API key as their `token`, and get the server's exact 4xx;
- `/docs.json` states the real constraints and schemathesis (property-based, bounded) finds no 5xx,
  no undocumented status and no response that disagrees with the document;
- `/resolve` with `format: "ort"`: the client downloads the `.ort` file, checks its sha256 and runs it
  in ONNX Runtime.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
from pathlib import Path
from typing import Iterator

import httpx
import numpy as np
import pytest
from PIL import Image

from _service_helpers import TAG, TASK, Server, png_bytes, start_service

API_KEY = "schema-test-key"
pytestmark = pytest.mark.timeout(600)
# (name, width, seed, p95 ms, options): "mobile" is published with an ORT-format variant
ARTIFACTS = [("small", 8, 1, 80.0), ("large", 16, 2, 20.0, {"variants": ("ort",)})]


@pytest.fixture(scope="module")
def server(s3_server, tmp_path_factory) -> Iterator[Server]:
    with start_service(
        s3_server, tmp_path_factory.mktemp("schema"), ARTIFACTS, ["small", "large"], workers=1, timeout_s=10.0,
        env_overrides={"POCKETGAN_SERVICE_MIN_OBSERVATIONS": "1000000", "POCKETGAN_SERVICE_DEFAULT_DEVICE_CLASS": "desktop"},
        api_key=API_KEY,
    ) as srv:
        yield srv


@pytest.fixture()
def image_file(tmp_path: Path) -> Path:
    path = tmp_path / "label.png"
    path.write_bytes(png_bytes(40, 28))
    return path


def test_sync_client_calls_translate_and_resolve_by_name(server: Server, image_file: Path) -> None:
    import bentoml

    with bentoml.SyncHTTPClient(server.url, token=API_KEY, server_ready_timeout=30) as client:
        assert {"translate", "resolve"} <= set(client.endpoints)
        out = client.translate(image=image_file, task=TASK, device_class="phone-high", latency_budget_ms=500,
                               output_format="webp")
        assert isinstance(out, Image.Image) and out.size == (40, 28) and out.format == "WEBP"
        # device_class may be left out: the budget (or the default class's) applies
        assert client.translate(image=image_file, task=TASK, latency_budget_ms=300).size == (40, 28)
        assert client.translate(image=image_file, task=TASK).size == (40, 28)
        body = client.resolve(task=TASK, hardware_tag=TAG, latency_budget_ms=1000, height=64, width=64)
        assert body["artifact"]["artifact_id"] == server.artifacts["small"] and body["format"] == "onnx"
        # the server's exact 4xx reaches the client: status + the one error shape
        with pytest.raises(bentoml.exceptions.BentoMLException) as err:
            client.translate(image=image_file, task="nope")
        assert err.value.error_code == 400
        assert json.loads(err.value.message)["reason"] == "unknown_task"
        with pytest.raises(bentoml.exceptions.BentoMLException) as err:
            client.resolve(task=TASK, hardware_tag=TAG, latency_budget_ms=0)
        assert err.value.error_code == 400 and json.loads(err.value.message)["reason"] == "budget_out_of_range"


def test_async_client_and_keys(server: Server, image_file: Path) -> None:
    import bentoml

    async def run() -> tuple[tuple[int, int], str]:
        async with bentoml.AsyncHTTPClient(server.url, token=API_KEY, server_ready_timeout=30) as client:
            img = await client.translate(image=image_file, task=TASK, device_class="desktop")
            res = await client.resolve(task=TASK, hardware_tag=TAG, latency_budget_ms=1000)
            return img.size, res["sha256"]

    size, sha = asyncio.run(run())
    assert size == (40, 28) and len(sha) == 64
    # the endpoint list is behind the API key like the endpoints themselves
    with httpx.Client(base_url=server.url, timeout=10) as c:
        r = c.get("/schema.json")
        assert r.status_code == 401 and r.json()["reason"] == "unauthorized"
    with pytest.raises(Exception):
        bentoml.SyncHTTPClient(server.url, server_ready_timeout=30)


def test_openapi_states_the_real_constraints(server: Server) -> None:
    with server.client() as c:
        doc = c.get("/docs.json").json()
    form = doc["paths"]["/translate"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    props = form["properties"]
    assert form["required"] == ["image", "task"]  # device_class optional
    assert props["task"]["enum"] == [TASK]
    assert set(props["device_class"]["enum"]) == {"phone-low", "phone-high", "desktop"}
    assert "desktop" in props["device_class"]["description"]  # the documented default (this server's)
    assert (props["latency_budget_ms"]["minimum"], props["latency_budget_ms"]["maximum"]) == (1.0, 60000.0)
    assert props["output_format"]["enum"] == ["png", "jpeg", "webp"]
    resolve = doc["paths"]["/resolve"]["post"]
    body = resolve["requestBody"]["content"]["application/json"]["schema"]
    assert body["properties"]["format"]["enum"] == ["onnx", "ort", "onnx-fp16"]
    assert body["properties"]["latency_budget_ms"]["minimum"] == 1.0
    for op in (doc["paths"]["/translate"]["post"], resolve):
        assert op["security"] == [{"apiKey": []}]
        for code in ("400", "401", "413", "429", "503", "504"):
            assert op["responses"][code]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")
        assert "422" not in op["responses"]  # validation errors are 400 here


def test_document_bounds_are_the_servers(server: Server) -> None:
    """Each stated constraint, probed just inside and just outside: the server accepts exactly what the
    document allows (a document claiming tighter or looser bounds than the server fails here)."""
    with server.client() as c:
        doc = c.get("/docs.json").json()
        form = doc["paths"]["/translate"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]
        body = doc["paths"]["/resolve"]["post"]["requestBody"]["content"]["application/json"]["schema"]["properties"]
        lo, hi = form["latency_budget_ms"]["minimum"], form["latency_budget_ms"]["maximum"]
        for budget, ok in ((lo, True), (hi, True), (lo - 0.5, False), (hi + 1, False)):
            assert (server.translate(c, latency_budget_ms=budget).status_code == 200) is ok, budget
        for field, bad in (("task", "nope"), ("device_class", "watch"), ("output_format", "gif")):
            allowed = form[field]["enum"]
            assert bad not in allowed
            assert server.translate(c, **{field: allowed[-1]}).status_code == 200
            r = server.translate(c, **{field: bad})
            assert r.status_code == 400, (field, r.text)
        base = {"task": TASK, "hardware_tag": TAG, "latency_budget_ms": 500}
        lo, hi = body["latency_budget_ms"]["minimum"], body["latency_budget_ms"]["maximum"]
        for budget, ok in ((lo, True), (hi, True), (lo - 0.5, False), (hi + 1, False)):
            assert (c.post("/resolve", json={**base, "latency_budget_ms": budget}).status_code == 200) is ok, budget
        for side, ok in ((body["height"]["maximum"], True), (body["height"]["maximum"] + 1, False), (0, False)):
            assert (c.post("/resolve", json={**base, "height": side}).status_code == 200) is ok, side
        for name in ("task", "hardware_tag", "latency_budget_ms"):
            assert c.post("/resolve", json={k: v for k, v in base.items() if k != name}).status_code == 400, name
        assert c.post("/resolve", json={**base, "extra": 1}).status_code == 400  # additionalProperties: false


def test_schemathesis_finds_no_5xx_and_no_mismatch(server: Server) -> None:
    """Property-based: bounded examples per operation, positive and negative data."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis.checks import (
        content_type_conformance,
        ignored_auth,
        negative_data_rejection,
        not_a_server_error,
        response_headers_conformance,
        response_schema_conformance,
        status_code_conformance,
        unsupported_method,
    )
    from schemathesis.generation import GenerationMode

    checks = [not_a_server_error, status_code_conformance, content_type_conformance,
              response_headers_conformance, response_schema_conformance, negative_data_rejection,
              ignored_auth, unsupported_method]
    schema = schemathesis.openapi.from_url(f"{server.url}/docs.json", headers=server.headers)
    headers = dict(server.headers)
    tested = []
    for result in schema.get_all_operations():
        op = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            if op.method.upper() == "GET" and mode is GenerationMode.NEGATIVE:
                continue  # no parameters to break

            @settings(max_examples=25 if op.method.upper() == "POST" else 2, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck), derandomize=True)
            @given(case=op.as_strategy(generation_mode=mode))
            def run(case) -> None:  # noqa: ANN001 - schemathesis.Case
                case.call_and_validate(base_url=server.url, headers=headers, checks=checks, timeout=30)

            run()
            tested.append((op.method.upper(), op.path, mode.value))
    assert ("POST", "/translate", "negative") in tested and ("POST", "/resolve", "positive") in tested


def test_resolve_ort_variant_runs_after_checking_its_sha256(server: Server) -> None:
    import onnxruntime as ort

    with server.client() as c:
        r = c.post("/resolve", json={"task": TASK, "hardware_tag": TAG, "latency_budget_ms": 1000, "format": "ort"})
        assert r.status_code == 200, r.text
        body = r.json()
        # only "large" has an .ort: it is chosen although "small" would be for onnx
        assert body["artifact"]["artifact_id"] == server.artifacts["large"]
        assert body["format"] == "ort" and body["path"] == "model.ort" and "ort" in body["artifact"]["formats"]
        assert body["written_by"] == ort.__version__
        blob = httpx.get(body["url"], timeout=10).content
        assert hashlib.sha256(blob).hexdigest() == body["sha256"] != body["artifact"]["model_sha256"]
        assert len(blob) == body["bytes"]
        r = c.post("/resolve", json={"task": TASK, "hardware_tag": TAG, "latency_budget_ms": 1000, "format": "onnx-fp16"})
        assert r.status_code == 404 and r.json()["reason"] == "format_unavailable"
    # the service itself pulled only what it runs: model.onnx, not the variant
    cached = server.log.parent / "cache-service" / "artifacts" / TASK / server.artifacts["large"]
    assert (cached / "model.onnx").is_file() and not (cached / "model.ort").exists()
    sess = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
    x = np.asarray(Image.open(io.BytesIO(png_bytes(32, 32))), np.float32).transpose(2, 0, 1)[None] / 127.5 - 1
    y = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    assert y.shape == (1, 3, 32, 32) and np.isfinite(y).all()
