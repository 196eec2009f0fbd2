"""The package's layering, read from the sources: the evaluation never imports the analyses (the GFLOPs
counter both use lives below them, in ``robustmoe_bench.flops``), and dissection and IoU share their
routing helpers through ``analysis.routes`` instead of importing each other."""
from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "robustmoe_bench"


def imported_modules(path: Path) -> set[str]:
    """Absolute names of the package modules ``path`` imports (top level and inside functions)."""
    here = "robustmoe_bench." + ".".join(path.relative_to(PKG).with_suffix("").parts)
    parts = here.split(".")
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(parts[:len(parts) - node.level] + ([base] if base else []))
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {m for m in out if m.startswith("robustmoe_bench")}


def test_the_evaluation_does_not_import_the_analyses():
    bad = {str(p.relative_to(PKG)): sorted(m for m in imported_modules(p) if m.startswith("robustmoe_bench.analysis"))
           for p in (PKG / "evaluation").rglob("*.py")}
    assert not {k: v for k, v in bad.items() if v}
    assert "robustmoe_bench.flops" in imported_modules(PKG / "evaluation" / "runner.py")


def test_dissect_and_iou_do_not_import_each_other():
    assert not any("iou" in m for m in imported_modules(PKG / "analysis" / "dissect.py"))
    assert not any("dissect" in m for m in imported_modules(PKG / "analysis" / "iou.py"))


def test_the_import_reader_sees_relative_and_nested_imports():
    assert "robustmoe_bench.analysis.routes" in imported_modules(PKG / "analysis" / "iou.py")
    assert "robustmoe_bench.adapters.external" in imported_modules(PKG / "flops.py")  # inside a function
