"""The dependency rules of docs/architecture.md, and thin front ends, enforced on the source.

Imports are read from the syntax tree (module-level and function-level alike), so a lazy import
inside a function breaks a rule just as a top-level one does.
"""

from __future__ import annotations

import ast
import io
import subprocess
import sys
import tokenize
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


def _files(*parts: str) -> list[Path]:
    base = REPO.joinpath(*parts)
    return [base] if base.is_file() else sorted(base.rglob("*.py"))


def _violations(files: list[Path], allowed=lambda m: True, forbidden=lambda m: False) -> list[str]:
    bad = []
    for f in files:
        for mod in sorted(_imports(f)):
            if forbidden(mod) or not allowed(mod):
                bad.append(f"{f.relative_to(REPO)} imports {mod}")
    return bad


def _top(mod: str) -> str:
    return mod.split(".")[0]


def _is(mod: str, *prefixes: str) -> bool:
    return any(mod == p or mod.startswith(p + ".") for p in prefixes)


def test_merging_imports_nothing_of_the_project_but_utils():
    files = _files("r2m", "merging")
    assert len(files) > 5
    assert _violations(files, allowed=lambda m: not _is(m, "r2m", "data_modules") or _is(m, "r2m.merging", "r2m.utils")
                       ) == []
    assert _violations(files, forbidden=lambda m: _top(m) in ("lightning", "pytorch_lightning", "hydra", "omegaconf")) == []


def test_evaluation_metrics_know_no_models_nor_datasets():
    files = [f for f in _files("r2m", "evaluation") if f.name != "evaluator.py"]  # the evaluator is the Lightning seam
    assert _violations(files, forbidden=lambda m: _is(m, "r2m.models", "data_modules", "r2m.pool", "r2m.pipeline",
                                                      "lightning", "pytorch_lightning")) == []


def test_data_modules_and_models_do_not_import_each_other():
    assert _violations(_files("data_modules"), forbidden=lambda m: _is(m, "r2m.models")) == []
    assert _violations(_files("r2m", "models"), forbidden=lambda m: _is(m, "data_modules")) == []


def test_pool_knows_files_not_lightning_and_report_knows_results_not_models():
    assert _violations(_files("r2m", "pool.py"), forbidden=lambda m: _is(m, "lightning", "pytorch_lightning",
                                                                         "r2m.models.detector", "hydra")) == []
    assert _violations(_files("r2m", "report.py"), forbidden=lambda m: _is(m, "r2m.models", "data_modules", "lightning",
                                                                           "r2m.pool", "r2m.merging")) == []
    code = "import sys, r2m.pool, r2m.report, r2m.merging.jobs; print(sorted(m for m in sys.modules if m.split('.')[0] in ('lightning', 'pytorch_lightning')))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def _code_lines(path: Path) -> int:
    """Lines holding code: no blank lines, comments or docstrings."""
    src = path.read_text(encoding="utf-8")
    doc_lines: set[int] = set()
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(getattr(first, "value", None), ast.Constant) \
                    and isinstance(first.value.value, str):
                doc_lines.update(range(first.lineno, first.end_lineno + 1))
    lines = set()
    for tok in tokenize.generate_tokens(io.StringIO(src).readline):
        if tok.type not in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
                            tokenize.ENDMARKER) and tok.start[0] not in doc_lines:
            lines.add(tok.start[0])
    return len(lines)


@pytest.mark.parametrize(("path", "limit"), [
    ("merge.py", 20),
    ("r2m/callbacks/merge.py", 80),
    ("r2m/callbacks/hydra.py", 110),
])
def test_front_ends_are_thin(path, limit):
    n = _code_lines(REPO / path)
    assert n <= limit, f"{path} has {n} code lines (limit {limit}): move policy into r2m.pipeline / pool / report"
    src = (REPO / path).read_text()
    for forbidden in ("merge_many(", "verify_specialists(", "plot_roc(", "ResultsTable(", "wandb.init("):
        assert forbidden not in src, f"{path} does the pipeline's work ({forbidden})"
