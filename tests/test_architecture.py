"""The layering the architecture document promises, checked on the code itself."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

from medheaven.federated.phase import Phase

ROOT = Path(__file__).resolve().parent.parent


def _modules_after_import(module: str) -> set[str]:
    code = f"import sys, {module}; print('\\n'.join(sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    return set(done.stdout.split())


def test_architecture_round_loop_imports_no_celery() -> None:
    loaded = _modules_after_import("coordinator.loop")
    framework = sorted(m for m in loaded if m.split(".")[0] in {"celery", "kombu", "workers"})
    assert not framework, f"importing coordinator.loop loaded {framework}: the loop must depend on Transport only"


def _imported_packages(path: Path) -> set[tuple[int, str]]:
    """Top-level packages a module imports anywhere in its body (functions too: a deferred import is an edge)."""
    found: set[tuple[int, str]] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update((node.lineno, alias.name.split(".")[0]) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add((node.lineno, node.module.split(".")[0]))
    return found


def test_architecture_library_imports_nothing_from_the_application() -> None:
    library = ROOT / "medheaven"
    modules = sorted(library.rglob("*.py"))
    assert len(modules) > 50, f"found only {len(modules)} modules under {library}"
    edges = [
        f"{path.relative_to(ROOT)}:{line} imports {package}"
        for path in modules
        for line, package in sorted(_imported_packages(path))
        if package in {"coordinator", "workers"}
    ]
    assert not edges, "medheaven/ must not depend on the application or the workers:\n" + "\n".join(edges)


def test_architecture_import_scan_sees_deferred_imports(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    from coordinator.demo import run_demo\n    import workers.app\n")
    assert {package for _, package in _imported_packages(sample)} == {"coordinator", "workers"}


PHASE_NAMES = frozenset(phase.value for phase in Phase)
COMPARISONS = (ast.Eq, ast.NotEq, ast.In, ast.NotIn)


def _phase_name_comparisons(path: Path) -> list[int]:
    """Lines comparing something with a phase's name as a string (``kind == "stats"``, ``kind in ("stats", ...)``,
    ``case "stats":``): each is a decision per phase taken outside the ``Phase`` type."""

    def names_a_phase(node: ast.expr) -> bool:
        if isinstance(node, ast.Constant):
            return node.value in PHASE_NAMES
        return isinstance(node, ast.Tuple | ast.List | ast.Set) and any(names_a_phase(e) for e in node.elts)

    lines = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Compare) and any(isinstance(op, COMPARISONS) for op in node.ops):
            if any(names_a_phase(operand) for operand in (node.left, *node.comparators)):
                lines.append(node.lineno)
        elif isinstance(node, ast.MatchValue) and names_a_phase(node.value):
            lines.append(node.lineno)
    return sorted(lines)


def test_architecture_phase_names_are_compared_only_in_the_phase_type() -> None:
    owner = ROOT / "medheaven" / "federated" / "phase.py"
    modules = [p for package in ("medheaven", "coordinator", "workers") for p in sorted((ROOT / package).rglob("*.py"))]
    assert owner in modules and len(modules) > 80
    found = [
        f"{path.relative_to(ROOT)}:{line}"
        for path in modules
        if path != owner
        for line in _phase_name_comparisons(path)
    ]
    assert not found, "compare with a Phase member (or ask it a property), not its name:\n" + "\n".join(found)


def test_architecture_phase_comparison_scan_sees_each_form(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        'a = kind == "stats"\nb = "update" != kind\nc = kind in ("layout", "stats")\n'
        'match kind:\n    case "update":\n        pass\nd = kind == Phase.STATS\ne = name == "statistics"\n'
    )
    assert _phase_name_comparisons(sample) == [1, 2, 3, 5]


def _documented_modules(markdown: str) -> set[str]:
    """Paths the module table of docs/architecture.md names: a cell's first path sets the folder for the bare file
    names after it (``medheaven/federated/ledger.py``, ``round_policy.py``); a path ending in ``/`` is a package."""
    named: set[str] = set()
    for line in markdown.splitlines():
        if not line.startswith("| `"):
            continue
        folder = ""
        for token in re.findall(r"`([^`]+)`", line.split("|")[1]):
            if "/" in token:
                folder = token if token.endswith("/") else token.rsplit("/", 1)[0] + "/"
                named.add(token)
            else:
                named.add(folder + token)
    return named


def _undocumented(modules: list[str], named: set[str]) -> list[str]:
    packages = tuple(n for n in named if n.endswith("/"))
    return [m for m in modules if m not in named and not m.startswith(packages)]


def test_architecture_document_names_every_module() -> None:
    modules = [
        path.relative_to(ROOT).as_posix()
        for package in ("medheaven", "coordinator", "workers")
        for path in sorted((ROOT / package).rglob("*.py"))
        if path.name not in {"__init__.py", "__main__.py"}
    ]
    named = _documented_modules((ROOT / "docs" / "architecture.md").read_text(encoding="utf-8"))
    missing = _undocumented(modules, named)
    assert not missing, "docs/architecture.md, 'What each module owns', says nothing of:\n" + "\n".join(missing)
    assert _undocumented(["medheaven/federated/new_rule.py"], named) == ["medheaven/federated/new_rule.py"]
    assert _undocumented(["medheaven/crypto/new_scheme.py"], named) == []  # medheaven/crypto/ is one row
