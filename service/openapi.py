"""The service's API description, from one place: `/docs.json` (OpenAPI) and `/schema.json` (BentoML clients).

Why our own document instead of BentoML's merged one: BentoML merges a mounted FastAPI app's paths
through its own OpenAPI classes (dropping multipart details) and describes its probes with bodies
the edge reshapes. Here every operation lists exactly what the edge and the handlers answer
(`ErrorBody` for every status >= 400), and the constraints are the deployment's own: the served
tasks and device classes as enums, the budget bounds, the resolve formats. `tests/test_service_schema.py`
runs schemathesis against the real server with this document.

Why `/schema.json` routes: `bentoml.SyncHTTPClient` / `AsyncHTTPClient` learn the callable endpoints
from `/schema.json`'s `routes` (name, route, input JSON schema with `"type": "file"` for uploads).
The routes themselves stay the FastAPI handlers behind the edge, so every guarantee (body size and
deadline before parsing, one error shape, exact 4xx reasons) holds for those clients too. BentoML's
client sends every non-file multipart field JSON-encoded (`"facades"` with quotes): the handler
accepts both that and plain values (`service.service.form_value`).
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from registry.names import NAME_PATTERN
from service.schemas import RESOLVE_FORMATS, ErrorBody

if TYPE_CHECKING:
    from fastapi import FastAPI

    from service.settings import ServiceSettings

OUTPUT_FORMATS = ["png", "jpeg", "webp"]
IMAGE_TYPES = ["image/png", "image/jpeg", "image/webp"]
TRANSLATE_HEADERS = (
    "X-Pocketgan-Artifact", "X-Pocketgan-Expected-Ms", "X-Pocketgan-Actual-Ms", "X-Pocketgan-Budget-Ms",
    "X-Pocketgan-Budget-Met", "X-Pocketgan-No-Eligible", "X-Pocketgan-Hardware-Tag", "X-Pocketgan-Policy",
    "X-Pocketgan-Fallback-From", "X-Pocketgan-Probe",
)
# status -> when it happens (the description of each documented error response)
ERROR_WHEN = {
    400: "bad parameter or form (reason says which)",
    401: "no valid API key (Authorization: Bearer <key>)",
    403: "served inside the cluster only",
    404: "no promoted artifact is published in the asked format (reason format_unavailable)",
    408: "the body did not arrive within body_timeout_s",
    413: "body or image too large",
    415: "not multipart/form-data, or not a PNG/JPEG/WEBP image",
    429: "this worker is at its concurrency limit (Retry-After)",
    500: "a bug (no details; the log has them under the request id)",
    503: "busy / not ready / no servable model / registry unavailable (Retry-After)",
    504: "not processed within timeout_s",
}
_POST_ERRORS = (400, 408, 413, 429, 500, 503, 504)


def _errors(codes: tuple[int, ...]) -> dict[str, Any]:
    ref = {"$ref": "#/components/schemas/ErrorBody"}
    return {str(c): {"description": ERROR_WHEN[c], "content": {"application/json": {"schema": ref}}} for c in codes}


def _name_schema(kind: str, allowed: list[str] | None) -> dict[str, Any]:
    """A registry name (task, device class, hardware tag): the served values when known."""
    schema: dict[str, Any] = {"type": "string", "minLength": 1, "maxLength": 64, "description": kind}
    if allowed:
        schema["enum"] = list(allowed)
    else:
        schema["pattern"] = NAME_PATTERN.pattern
    return schema


def _budget_schema(settings: ServiceSettings | None, description: str) -> dict[str, Any]:
    lo, hi = (settings.min_budget_ms, settings.max_budget_ms) if settings else (1.0, 60000.0)
    return {"type": "number", "minimum": lo, "maximum": hi, "description": description}


def translate_form(settings: ServiceSettings | None) -> dict[str, Any]:
    """The multipart form of POST /translate (the image is the file part `image`)."""
    classes = list(settings.device_classes) if settings else None
    default_class = settings.device_class_or_default(None) if settings else "the first configured device class"
    return {
        "type": "object",
        "required": ["image", "task"],
        "properties": {
            "image": {"type": "string", "format": "binary", "description": "PNG, JPEG or WEBP (by content)"},
            "task": _name_schema("task served here", settings.tasks if settings else None),
            "device_class": {
                **_name_schema("device class: its default budget and selection policy", classes),
                "description": f"default: {default_class} (DEFAULT_DEVICE_CLASS)",
            },
            "latency_budget_ms": _budget_schema(settings, "default: the device class's budget"),
            "output_format": {"type": "string", "enum": OUTPUT_FORMATS, "description": "default: the input's format"},
        },
    }


def resolve_body(settings: ServiceSettings | None) -> dict[str, Any]:
    """The JSON body of POST /resolve (mirrors `service.schemas.ResolveRequest`, plus the served values)."""
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["task", "hardware_tag", "latency_budget_ms"],
        "properties": {
            "task": _name_schema("task served here", settings.tasks if settings else None),
            "hardware_tag": _name_schema("the client's hardware tag (profiles recorded for it are used)", None),
            "latency_budget_ms": _budget_schema(settings, "the budget on the client"),
            "height": {"type": "integer", "minimum": 1, "maximum": 16384, "default": 256},
            "width": {"type": "integer", "minimum": 1, "maximum": 16384, "default": 256},
            "format": {
                "type": "string", "enum": list(RESOLVE_FORMATS), "default": "onnx",
                "description": "the model format the client runs: onnx, ort (ONNX Runtime Mobile) or onnx-fp16; "
                "only artifacts published with that variant are candidates (none: 404 format_unavailable)",
            },
        },
    }


def openapi_document(app: FastAPI, settings: ServiceSettings | None, *, title: str, version: str) -> dict[str, Any]:
    """The whole OpenAPI 3.1 document. `settings` None (at `bentoml build`): no deployment-specific enums."""
    from fastapi.openapi.utils import get_openapi

    doc = get_openapi(title=title, version=version, routes=app.routes, description=app.description)
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    schemas["ErrorBody"] = ErrorBody.model_json_schema()
    schemas.pop("ValidationError", None)
    schemas.pop("HTTPValidationError", None)
    protected = bool(settings and settings.api_key_hashes)
    internal = bool(settings and settings.internal_networks)
    if protected:
        doc["components"]["securitySchemes"] = {"apiKey": {"type": "http", "scheme": "bearer"}}

    def post_errors(extra: tuple[int, ...] = ()) -> dict[str, Any]:
        return _errors(tuple(sorted({*_POST_ERRORS, *extra, *((401,) if protected else ())})))

    paths = doc["paths"]
    paths["/translate"]["post"].update({
        "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": translate_form(settings)}}},
        "responses": {
            "200": {
                "description": "the translated image, same size as the input; see the X-Pocketgan-* headers",
                "content": {t: {"schema": {"type": "string", "format": "binary"}} for t in IMAGE_TYPES},
                "headers": {h: {"schema": {"type": "string"}} for h in TRANSLATE_HEADERS},
            },
            **post_errors((415,)),
        },
    })
    resolve = paths["/resolve"]["post"]
    resolve["requestBody"] = {"required": True, "content": {"application/json": {"schema": resolve_body(settings)}}}
    resolve["responses"] = {"200": resolve["responses"]["200"], **post_errors((404,))}
    models = paths["/models"]["get"]
    models["responses"] = {"200": models["responses"]["200"], **_errors((403, 500) if internal else (500,))}
    if protected:
        for op in (paths["/translate"]["post"], resolve):
            op["security"] = [{"apiKey": []}]
    paths.update(_infra_paths(internal, protected))
    return doc


def _infra_paths(internal: bool, protected: bool) -> dict[str, Any]:
    """Probes, metrics and the two descriptions, as the edge answers them."""
    text = {"text/plain": {"schema": {"type": "string"}}}
    json_obj = {"application/json": {"schema": {"type": "object"}}}
    inside = (403,) if internal else ()

    def get(summary: str, content: dict[str, Any], errors: tuple[int, ...]) -> dict[str, Any]:
        return {"get": {"summary": summary, "responses": {"200": {"description": "OK", "content": content},
                                                          **_errors(tuple(sorted({*errors, 500})))}}}

    return {
        "/readyz": get("ready: every task has a loaded, warmed-up model", text, (503,)),
        "/livez": get("alive", text, (503,)),
        "/healthz": get("alive", text, (503,)),
        "/metrics": get("Prometheus exposition, all workers", text, inside),
        "/docs.json": get("this document", json_obj, inside),
        "/schema.json": get("the endpoints BentoML's HTTP clients call", json_obj, (401,) if protected else ()),
    }


def client_routes() -> list[dict[str, Any]]:
    """`/schema.json` routes in BentoML's format, so its clients get `client.translate(...)` / `client.resolve(...)`.

    No deployment-specific values (this also goes into the built bento): the server checks those."""
    form = copy.deepcopy(translate_form(None))
    form["properties"]["image"] = {"type": "file", "format": "image", "pil": True, "title": "Image"}
    form["title"] = "Input"
    body = copy.deepcopy(resolve_body(None))
    body["title"] = "Input"
    body.pop("additionalProperties")
    return [
        {
            "name": "translate", "route": "/translate", "batchable": False, "is_task": False,
            "description": "Translate one image with the smallest promoted generator expected to meet the budget.",
            "input": form,
            "output": {"type": "file", "format": "image", "pil": True},
        },
        {
            "name": "resolve", "route": "/resolve", "batchable": False, "is_task": False,
            "description": "For on-device inference: the artifact for the client's hardware tag and budget, "
            "with a presigned URL and its sha256.",
            "input": body,
            "output": {"type": "object", "additionalProperties": True},
        },
    ]


class OpenAPIDocument(dict):
    """A plain dict with the `asdict()` BentoML's /docs.json view and `bentoml build` call."""

    def asdict(self) -> dict[str, Any]:
        return dict(self)


def _represent(dumper: Any, doc: OpenAPIDocument) -> Any:
    return dumper.represent_dict(dict(doc))


def register_yaml() -> None:
    """`bentoml build` writes the document with yaml.dump."""
    import yaml

    yaml.add_representer(OpenAPIDocument, _represent)
