"""The house's rules, checked on the source: stages import only what they may, no cycles, inference free of training.

The table below is the one in docs/architecture.md. Every import counts, also one inside a function.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import cmm_cache

# The source tree (these rules are about the code as written; an installed copy also holds cli/ and
# data_manifests/ inside the package, mapped there by pyproject).
REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "cmm_cache" if (REPO / "cmm_cache" / "__init__.py").is_file() else Path(cmm_cache.__file__).parent
CLI = REPO / "cli"

# What each stage may import (besides itself). Stages are the folders of cmm_cache/ (and the loose errors module).
ALLOWED = {
    "errors": set(),
    "util": {"errors"},
    "datasets": {"errors", "util"},
    "backbones": {"errors", "util"},
    "cache": {"errors", "util", "datasets"},
    "extract": {"errors", "util", "datasets", "backbones", "cache"},
    "heads": {"errors", "util"},
    "evaluation": {"errors", "util", "datasets", "backbones", "cache", "heads"},
    "methods": {"errors", "util", "datasets", "backbones", "cache", "heads", "evaluation"},
    "runs": {"errors", "util", "datasets", "backbones", "cache", "heads", "evaluation", "methods"},
    "serving": {"errors", "util", "datasets", "backbones", "cache", "extract", "heads", "evaluation"},
    "analysis": {"errors", "util", "datasets", "backbones", "cache", "heads", "evaluation", "methods", "runs"},
    "bench": {"errors", "util", "datasets", "backbones", "cache", "extract", "heads", "evaluation", "methods", "runs"},
}
INFERENCE = ("heads", "evaluation", "serving")
TRAINING = ("methods", "runs")
TOP_LEVEL = {"__init__", "__main__", "errors"}  # the only loose modules: entry points and the error type


def _modules() -> dict[str, Path]:
    out = {}
    for p in sorted(PACKAGE.rglob("*.py")):
        rel = p.relative_to(PACKAGE).with_suffix("")
        parts = ["cmm_cache", *rel.parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    for p in sorted(CLI.rglob("*.py")):
        rel = p.relative_to(CLI).with_suffix("")
        parts = ["cmm_cache", "cli", *rel.parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Every cmm_cache module `name` imports (relative imports resolved; `from pkg import mod` is the module)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    pkg = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if not mod.startswith("cmm_cache"):
                continue
            for a in node.names:
                found.add(f"{mod}.{a.name}" if f"{mod}.{a.name}" in MODULES else mod)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("cmm_cache"))
    return {m for m in found if m in MODULES and m != name}


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def stage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_only_entry_points_and_the_error_type_are_loose():
    loose = {p.stem for p in PACKAGE.glob("*.py")}
    assert loose == TOP_LEVEL


def test_every_stage_folder_is_in_the_table_and_documents_itself():
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert folders == set(ALLOWED) - {"errors"}
    for f in folders:
        doc = ast.get_docstring(ast.parse((PACKAGE / f / "__init__.py").read_text()))
        assert doc and "may import" in doc.lower(), f"cmm_cache/{f}/__init__.py must say what it may import"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if stage(m) in ALLOWED))
def test_a_stage_imports_only_what_it_may(module):
    own = stage(module)
    wrong = sorted(m for m in GRAPH[module] if stage(m) not in ALLOWED[own] | {own} and stage(m) != "__init__")
    assert not wrong, f"{module} ({own}) imports {wrong}; {own} may import {sorted(ALLOWED[own])}"


def _closure(start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for m in GRAPH[todo.pop()]:
            if m not in seen:
                seen.add(m)
                todo.append(m)
    return seen


@pytest.mark.parametrize("module", sorted(m for m in MODULES if stage(m) in INFERENCE))
def test_inference_never_reaches_training_code(module):
    reached = sorted(m for m in _closure(module) if stage(m) in TRAINING)
    assert not reached, f"{module} reaches training code: {reached}"


def test_no_import_cycles():
    cycles = []
    state: dict[str, int] = {}

    def visit(m, path):
        state[m] = 1
        for n in sorted(GRAPH[m]):
            if state.get(n) == 1:
                cycles.append(path[path.index(n) :] + [n])
            elif n not in state:
                visit(n, path + [n])
        state[m] = 2

    for m in sorted(GRAPH):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_checker_sees_a_wrong_way_import(tmp_path):
    """The walk is not vacuous: a planted heads -> methods import is found as one."""
    fake = tmp_path / "planted.py"
    fake.write_text("from cmm_cache.methods.registry import get_method\n")
    found = _imports("cmm_cache.heads.planted", fake)
    assert "cmm_cache.methods.registry" in found
    assert stage("cmm_cache.methods.registry") not in ALLOWED["heads"]


def test_docs_architecture_names_every_stage():
    doc = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
    for f in set(ALLOWED) - {"errors"}:
        assert f"`{f}/`" in doc, f"docs/architecture.md does not describe cmm_cache/{f}/"


def test_test_file_names_are_unique():
    """pytest imports test modules by their base name (tests/README.md): two folders with one name break collection."""
    names = [p.name for p in (REPO / "tests").rglob("test_*.py")]
    assert len(names) == len(set(names)), sorted({n for n in names if names.count(n) > 1})
