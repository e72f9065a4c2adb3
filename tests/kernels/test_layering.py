"""kernels/ is the bottom layer: it imports nothing from engine/ or services/ (the engine passes in what the
kernels need, e.g. the rotary table and the PDL switch)."""
import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_kernels_import_nothing_from_the_engine():
    bad = []
    for path in sorted((ROOT / "kernels").glob("*.py")):
        if path.name.startswith("bench"):  # timing scripts, on their way to benchmarks/
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            bad += [f"{path.name}: {n}" for n in names if n.split(".")[0] in ("engine", "services")]
    assert bad == []
