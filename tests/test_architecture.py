"""The layering rules of DESIGN.md, checked on the source: no import cycle between our
modules, `ranking/` and `retrieval/` are libraries (no app, web, database or job import,
no environment read), and nothing but the Celery worker imports `jobs/`."""

from __future__ import annotations

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("ranking", "retrieval", "recsys", "jobs")
LIBRARIES = ("ranking", "retrieval")
# what a library must not import (the application and the service stack)
FORBIDDEN_IN_LIBRARIES = ("recsys", "jobs", "fastapi", "sqlalchemy", "celery", "redis", "alembic")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def imported_names(path: Path) -> set[str]:
    """Every module name an import statement in `path` names, at any depth (imports inside
    functions count: a lazy import is still a dependency), except under TYPE_CHECKING."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if _is_type_checking(child):
                continue
            if isinstance(child, ast.Import):
                found.update(a.name for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    up = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join([*up, base] if base else up)
                found.add(base)
                found.update(f"{base}.{a.name}" for a in child.names)
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return found


def internal_edges(name: str) -> set[str]:
    """Our modules `name` imports (a package's own __init__ chain excluded)."""
    out = set()
    for target in imported_names(MODULES[name]):
        while target and target not in MODULES:
            target = target.rpartition(".")[0]
        if target and target != name and not name.startswith(target + "."):
            out.add(target)
    return out


def test_the_module_import_graph_is_acyclic():
    graph = {name: internal_edges(name) for name in MODULES}
    try:
        tuple(TopologicalSorter(graph).static_order())
    except CycleError as exc:
        pytest.fail(f"import cycle: {' -> '.join(exc.args[1])}")


def test_the_cycle_check_finds_a_cycle():
    """The check itself can fail: a two-module cycle is reported."""
    with pytest.raises(CycleError):
        tuple(TopologicalSorter({"a": {"b"}, "b": {"a"}}).static_order())


@pytest.mark.parametrize("library", LIBRARIES)
def test_libraries_import_no_application_or_service_layer(library):
    bad = []
    for name, path in MODULES.items():
        if name.split(".")[0] != library:
            continue
        for target in imported_names(path):
            if target.split(".")[0] in FORBIDDEN_IN_LIBRARIES:
                bad.append(f"{name} imports {target}")
    assert not bad, bad


def _environment_reads(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv", "putenv"):
            found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


@pytest.mark.parametrize("library", LIBRARIES)
def test_libraries_read_no_environment(library):
    """Options reach ranking/ and retrieval/ as arguments (recsys.runtime builds them)."""
    reads = [hit for p in (ROOT / library).rglob("*.py") for hit in _environment_reads(p)]
    assert not reads, reads


def test_only_entry_points_import_jobs():
    """The job layer sits on top: the worker and the command line (which enqueues a
    fanned-out batch) may use it, nothing below them may."""
    entry_points = ("jobs", "recsys.commands.")
    users = [name for name in MODULES if not name.startswith(entry_points)
             and any(t.split(".")[0] == "jobs" for t in imported_names(MODULES[name]))]  # fmt: skip
    assert users == []
