"""The tree's structural rules, checked on the source (no imports run).

- No product module is over 400 lines.
- Layers go one way: services -> engine -> kernels, and every layer -> shared. A product module never
  imports `tests`, `benchmarks` or `fixtures` (tooling uses the product, never the reverse).
- Every path and name that docs/architecture.md cites exists.
"""
from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PRODUCT = ("shared", "kernels", "engine", "services")
TOOLING = ("tests", "benchmarks", "fixtures")
# What each product package may import from the others.
ALLOWED = {
    "shared": {"shared"},
    "kernels": {"kernels", "shared"},
    "engine": {"engine", "kernels", "shared"},
    "services": {"services", "engine", "kernels", "shared"},
}
MAX_LINES = 400


def product_modules() -> list[Path]:
    return sorted(p for pkg in PRODUCT for p in (ROOT / pkg).rglob("*.py"))


def imported_top_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_the_tree_has_product_modules():
    assert len(product_modules()) > 40


@pytest.mark.parametrize("path", product_modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_module_size_and_layering(path: Path):
    lines = path.read_text().count("\n")
    assert lines <= MAX_LINES, f"{path.relative_to(ROOT)} has {lines} lines (at most {MAX_LINES})"
    package = path.relative_to(ROOT).parts[0]
    imported = imported_top_packages(path)
    tooling = imported & set(TOOLING)
    assert not tooling, f"{path.relative_to(ROOT)} imports tooling: {sorted(tooling)}"
    wrong = (imported & set(PRODUCT)) - ALLOWED[package]
    assert not wrong, f"{path.relative_to(ROOT)} ({package}) imports {sorted(wrong)} against the layering"


def test_the_layering_check_sees_imports(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("import engine.scheduler\nfrom tests.e2e import x\nfrom . import y\n"
                     "def f():\n    import kernels\n")
    assert imported_top_packages(probe) == {"engine", "tests", "kernels"}


# ---------------------------------------------------------------- docs/architecture.md cites only what exists

CITED = re.compile(r"`([^`\s]+)`")
PATH_LIKE = re.compile(r"^[\w./-]+\.(py|md|sh|toml|conf|json|yml)$|^[\w-]+/([\w./-]*)$")
DOTTED = re.compile(r"^(shared|kernels|engine|services)(\.\w+)+(\(\))?$")
CLASS_NAME = re.compile(r"^[A-Z][a-z]+[A-Z]\w*$")  # CamelCase: a class some product module defines


def resolve_dotted(name: str) -> bool:
    """`engine.scheduler.Scheduler.update`: the longest module prefix that is a file, then attributes in its AST."""
    parts = name.removesuffix("()").split(".")
    for cut in range(len(parts), 0, -1):
        base = ROOT.joinpath(*parts[:cut])
        module = base.with_suffix(".py") if base.with_suffix(".py").exists() else base / "__init__.py"
        if module.exists():
            return defined_in(module, parts[cut:])
    return False


def defined_in(module: Path, attrs: list[str]) -> bool:
    scope: list[ast.stmt] = ast.parse(module.read_text()).body
    for attr in attrs:
        found = None
        for node in scope:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == attr:
                found = node
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                if any(isinstance(t, ast.Name) and t.id == attr for t in targets):
                    found = node
        if found is None:
            return False
        scope = getattr(found, "body", [])
    return True


def architecture_citations() -> list[str]:
    text = (ROOT / "docs" / "architecture.md").read_text()
    return sorted({c for c in CITED.findall(text) if PATH_LIKE.match(c) or DOTTED.match(c) or CLASS_NAME.match(c)})


@functools.cache
def product_class_names() -> frozenset[str]:
    return frozenset(node.name for path in product_modules() for node in ast.walk(ast.parse(path.read_text()))
                     if isinstance(node, ast.ClassDef))


def test_architecture_doc_cites_enough():
    assert len(architecture_citations()) >= 40


@pytest.mark.parametrize("cited", architecture_citations())
def test_architecture_doc_citation_exists(cited: str):
    if DOTTED.match(cited):
        assert resolve_dotted(cited), f"docs/architecture.md cites {cited}, which is not defined"
    elif CLASS_NAME.match(cited):
        assert cited in product_class_names(), f"docs/architecture.md cites class {cited}, which no module defines"
    else:
        assert (ROOT / cited.rstrip("/")).exists(), f"docs/architecture.md cites {cited}, which does not exist"
