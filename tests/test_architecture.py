"""The house rules on imports, read from the source with `ast` (nothing is imported).

- no import cycle among the project's modules (registry/, service/, compression_jobs/, pocketgan/);
  an import inside a function counts too: a lazy import that closes a cycle only hides it
  (imports under ``if TYPE_CHECKING:`` do not count, they never run);
- ``service/`` and ``compression_jobs/`` never import each other (both depend on ``registry/``);
- no module imports another module's ``_private`` name (``from m import _x`` or ``m._x``),
  also from tests/ and benchmarks/;
- in ``registry/`` and ``service/`` only the settings modules read environment variables
  (copying the whole environment for a child process is not a read).

``KNOWN_PRIVATE`` lists violations tolerated for now (none today); the
test fails on any violation not in it, and on an entry that is gone (delete it then).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("registry", "service", "compression_jobs", "pocketgan")
IMPORTERS = PACKAGES + ("tests", "benchmarks")
SEPARATE = ("service", "compression_jobs")

# (importing module, imported module, name) allowed for now; empty since the pipeline helpers the
# methods share became public (run_teacher, new_discriminator, distill_parts, held_out, ...).
KNOWN_PRIVATE: set[tuple[str, str, str]] = set()


def _modules(tops: tuple[str, ...]) -> dict[str, Path]:
    found = {}
    for top in tops:
        for path in sorted((ROOT / top).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _is_type_checking(node: ast.If) -> bool:
    return "TYPE_CHECKING" in ast.unparse(node.test)


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement that can run: anywhere but under ``if TYPE_CHECKING:``."""
    out: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            out.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return out


def _targets(module: str, path: Path, node: ast.Import | ast.ImportFrom,
             known: dict[str, Path]) -> list[tuple[str, str | None]]:
    """(imported module, imported name or None) per alias; ``from pkg import mod`` resolves to the module."""
    if isinstance(node, ast.Import):
        return [(a.name, None) for a in node.names]
    if node.level:
        base = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        source = ".".join(base + ([node.module] if node.module else []))
    else:
        source = node.module or ""
    out = []
    for alias in node.names:
        sub = f"{source}.{alias.name}"
        out.append((sub, None) if sub in known else (source, alias.name))
    return out


def _graph() -> tuple[dict[str, set[str]], set[tuple[str, str, str]]]:
    """Import edges among the project's modules, and every private name one module takes from another."""
    project = _modules(PACKAGES)
    everything = _modules(IMPORTERS)
    edges: dict[str, set[str]] = {m: set() for m in project}
    private: set[tuple[str, str, str]] = set()
    for module, path in everything.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        aliases: dict[str, str] = {}
        for node in _imports(tree):
            for target, name in _targets(module, path, node, project):
                if target.split(".")[0] not in PACKAGES:
                    continue
                if module in edges and target in project and target != module:
                    edges[module].add(target)
                if name is not None and name.startswith("_") and not name.startswith("__"):
                    private.add((module, target, name))
                if name is None:
                    for alias in node.names:
                        if isinstance(node, ast.ImportFrom) or alias.asname:
                            aliases[alias.asname or alias.name] = target
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in aliases and node.attr.startswith("_")
                    and not node.attr.startswith("__")):
                private.add((module, aliases[node.value.id], node.attr))
    return edges, private


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            strong(v)
    return found


@pytest.fixture(scope="module")
def graph() -> tuple[dict[str, set[str]], set[tuple[str, str, str]]]:
    return _graph()


def test_the_checker_sees_imports(graph) -> None:
    """Guard against a checker that finds nothing: edges we know exist are seen."""
    edges, _ = graph
    assert "compression_jobs.pipeline" in edges["compression_jobs.gan_compression.ddp"]
    assert "compression_jobs.gan_compression.batch_sync" in edges["compression_jobs.gan_compression.distill"]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle(graph) -> None:
    edges, _ = graph
    assert _cycles(edges) == []


def test_service_and_compression_jobs_never_import_each_other(graph) -> None:
    edges, _ = graph
    crossing = sorted((a, b) for a, targets in edges.items() for b in targets
                      if {a.split(".")[0], b.split(".")[0]} == set(SEPARATE))
    assert crossing == []


def test_no_module_imports_another_modules_private_names(graph) -> None:
    _, private = graph
    assert sorted(private - KNOWN_PRIVATE) == [], "make the name public or move it"
    assert sorted(KNOWN_PRIVATE - private) == [], "fixed: delete these from KNOWN_PRIVATE"


SETTINGS_MODULES = {"registry/config.py", "service/settings.py"}


def _env_reads(tree: ast.AST) -> list[int]:
    """Lines that read one variable: os.environ.get(...), os.environ[...], os.getenv(...)."""
    def is_environ(node: ast.AST) -> bool:
        return ast.unparse(node) in ("os.environ", "environ")

    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if (node.func.attr == "get" and is_environ(node.func.value)) or ast.unparse(node.func) == "os.getenv":
                lines.append(node.lineno)
        elif isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load) and is_environ(node.value):
            lines.append(node.lineno)
    return lines


def test_settings_are_read_in_one_place_per_package() -> None:
    found = []
    for top in ("registry", "service"):
        for path in sorted((ROOT / top).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel not in SETTINGS_MODULES:
                found += [f"{rel}:{n}" for n in _env_reads(ast.parse(path.read_text()))]
    assert found == [], "read it through RegistrySettings / ServiceSettings (pydantic-settings)"
    assert _env_reads(ast.parse("import os\nos.environ.get('X'); os.environ['Y']; os.getenv('Z')")) == [2, 2, 2]
