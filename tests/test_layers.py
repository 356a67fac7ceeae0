"""The package's layers, read from its source: who may import mlflow, optuna, the study and report
packages; no import cycles; commands that only read start without the training stack."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "ganft"
MLFLOW_ALLOWED = {"ganft.tracking", "ganft.study.mlflow_store"}


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, root: Path, *, top_level: bool = False) -> set[str]:
    """Absolute module names a file imports (``from a import b`` counts as ``a`` and ``a.b``);
    with ``top_level``, only the imports run when the module is imported (not inside functions)."""
    tree = ast.parse(path.read_text())
    me = module_name(path, root)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    nodes = tree.body if top_level else list(ast.walk(tree))
    out: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, *([node.module] if node.module else [])])
            out |= {base, *(f"{base}.{a.name}" for a in node.names)}
    return out


def modules(root: Path = PKG) -> dict[str, Path]:
    return {module_name(p, root): p for p in sorted(root.rglob("*.py"))}


def violations(root: Path = PKG) -> list[str]:
    """Every broken rule, one line each."""
    found = []
    mods = modules(root)
    pkg = root.name
    for name, path in mods.items():
        names = imports(path, root)
        roots = {n.split(".")[0] for n in names}
        inside = name.split(".")[1] if "." in name else ""
        if "mlflow" in roots and name.replace(pkg, "ganft", 1) not in MLFLOW_ALLOWED:
            found.append(f"{name} imports mlflow (only tracking and study.mlflow_store may)")
        if "optuna" in roots and inside not in ("study", "cli"):
            found.append(f"{name} imports optuna (only the study package and cli may)")
        if inside not in ("study", "report", "cli"):  # the experiment
            for layer in ("study", "report"):
                if any(n == f"{pkg}.{layer}" or n.startswith(f"{pkg}.{layer}.") for n in names):
                    found.append(f"{name} (the experiment) imports {pkg}.{layer}")
    found += [f"import cycle: {' -> '.join(c)}" for c in cycles(root)]
    return found


def cycles(root: Path = PKG) -> list[list[str]]:
    """Cycles among module-level imports (those that run when a module is imported)."""
    mods = modules(root)
    graph = {m: sorted(n for n in imports(p, root, top_level=True) if n in mods and n != m)
             for m, p in mods.items()}
    found, state = [], {}

    def visit(m: str, stack: list[str]) -> None:
        state[m] = "open"
        for n in graph[m]:
            if state.get(n) == "open":
                found.append([*stack[stack.index(n):], n])
            elif n not in state:
                visit(n, [*stack, n])
        state[m] = "done"

    for m in graph:
        if m not in state:
            visit(m, [m])
    return found


def test_the_package_keeps_its_import_rules() -> None:
    assert violations() == []
    # the layers exist where the README says they are
    assert {"ganft.study.run", "ganft.study.mlflow_store", "ganft.report.build", "ganft.tracking",
            "ganft.diffaugment", "ganft.classic_augment"} <= set(modules())


def test_a_planted_violation_is_caught(tmp_path: Path) -> None:
    """The checker is not vacuous: a copy of the rules' shape with planted offences fails each rule."""
    pkg = tmp_path / "fake"
    for rel, text in {
        "__init__.py": "",
        "data.py": "import mlflow\nfrom fake.study import run\n",  # experiment -> mlflow, -> study
        "synth.py": "import optuna\nfrom fake import data\nfrom . import quality\n",
        "quality.py": "from fake.synth import x\n",  # a cycle synth <-> quality
        "tracking.py": "import mlflow\n",  # allowed
        "study/__init__.py": "", "study/run.py": "import optuna\n",  # allowed
        "report/__init__.py": "", "report/build.py": "from fake.study import run\n",  # allowed
    }.items():
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_text(text)
    found = violations(pkg)
    assert "fake.data imports mlflow (only tracking and study.mlflow_store may)" in found
    assert "fake.data (the experiment) imports fake.study" in found
    assert "fake.synth imports optuna (only the study package and cli may)" in found
    assert any(f.startswith("import cycle: ") and "fake.quality" in f and "fake.synth" in f for f in found)
    assert len(found) == 4


SNIPPET = """
import sys
from ganft.cli import main
try:
    code = main({argv!r})
except SystemExit as exc:
    code = exc.code
heavy = sorted({{m.split('.')[0] for m in sys.modules}} & {{'torch', 'torchvision', 'sklearn'}})
print('HEAVY=' + ','.join(heavy))
"""


def _heavy_imports(argv: list[str], home: Path) -> str:
    env = {"GANFT_HOME": str(home), "PATH": "/usr/bin:/bin", "MLFLOW_DISABLE_TELEMETRY": "true"}
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(SNIPPET.format(argv=argv))], cwd=home,
                         capture_output=True, text=True, env=env, timeout=120)
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("HEAVY=")]
    assert line, out.stdout + out.stderr
    return line[0].removeprefix("HEAVY=")


@pytest.mark.parametrize("argv", [["--help"], ["study", "status", "tiny"], ["study", "repair", "tiny"],
                                  ["report", "tiny"]])
def test_commands_that_only_read_start_without_the_training_stack(argv: list[str], tiny_study: Path,
                                                                   home: Path) -> None:
    assert _heavy_imports([a if a != "tiny" else str(tiny_study) for a in argv], home) == ""
