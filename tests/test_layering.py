"""The dependency direction: ui -> backend -> models, training -> backend, models; no cycles; the
serving path never imports training code, sklearn or tqdm."""
import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("app", "ui", "backend", "models", "training", "benchmarks")
# What each top-level package may import (besides itself).
ALLOWED = {
    "app": {"ui", "backend"},
    "ui": {"backend", "models"},
    "backend": {"models"},
    "models": set(),
    "training": {"backend", "models"},
    "benchmarks": {"backend", "models", "training", "ui"},
}


def _modules() -> dict[str, Path]:
    found = {"app": ROOT / "app.py"}
    for package in PACKAGES[1:]:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imports(path: Path, name: str) -> set[str]:
    """Every project module a file imports, at module level or inside functions."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module
            if node.level:  # relative import
                base = ".".join(name.split(".")[: -node.level] + [node.module])
            out.add(base)
            out |= {f"{base}.{alias.name}" for alias in node.names}
    return {m for m in out if m.split(".")[0] in PACKAGES}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: {m for m in _imports(path, name) if m in modules and m != name} for name, path in modules.items()}


def test_imports_run_one_way():
    wrong = [
        f"{module} imports {target}"
        for module, targets in _graph().items()
        for target in targets
        if target.split(".")[0] != module.split(".")[0]
        and target.split(".")[0] not in ALLOWED[module.split(".")[0]]
    ]
    assert wrong == []


def test_the_module_import_graph_has_no_cycle():
    graph = _graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                cycles.append(" -> ".join(path[path.index(target) :] + [target]))
            elif target not in state:
                visit(target, [*path, target])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert cycles == []


def test_serving_code_never_imports_training_only_libraries():
    # tqdm itself is loaded at serving time by huggingface_hub and accelerate; our serving code must
    # not import it (nor sklearn) on its own account.
    banned = ("sklearn", "tqdm")
    wrong = []
    for name, path in _modules().items():
        if name.split(".")[0] in ("app", "ui", "backend", "models"):
            tree = ast.parse(path.read_text(), str(path))
            imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
            imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
            wrong += [f"{name} imports {m}" for m in imported if m.split(".")[0] in banned]
    assert wrong == []


def test_the_layer_checker_sees_a_wrong_arrow(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import os\nfrom backend.settings import get_settings\n\ndef f():\n    import training.metrics\n")
    assert _imports(bad, "models.bad") == {"backend.settings", "backend.settings.get_settings", "training.metrics"}


SERVING = """
import json, sys
from backend.predictors import model_status
from backend.profiles import get_profile
from backend.settings import get_settings
import ui.layout
status = model_status(get_profile("offline"), get_settings())
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("training", "sklearn"))
print(json.dumps({"status": {k: (v if isinstance(v, str) else "ready") for k, v in status.items()}, "loaded": loaded}))
"""


@pytest.mark.slow
def test_serving_loads_both_models_without_training_code(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "ERC_DATA_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", SERVING], cwd=ROOT, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["status"] == {"mister_e": "ready", "farcer": "ready"}
    assert result["loaded"] == []
