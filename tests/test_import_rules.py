"""The import directions of docs/architecture.md, checked on the real modules.

Each check runs in a fresh interpreter so modules imported by other tests cannot hide a
violation: the live path must work on a machine without torch (and the bridge without
onnxruntime), so importing it must not pull them in.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _modules(package: str) -> list[str]:
    return sorted(
        ".".join(path.relative_to(ROOT).with_suffix("").parts)
        for path in (ROOT / package).rglob("*.py")
        if path.name != "__main__.py"
    )


def _loaded_after_import(module: str) -> set[str]:
    code = (f"import sys, importlib; importlib.import_module({module!r}); "
            "print('\\n'.join(sorted(m.split('.')[0] for m in sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=ROOT, check=False)
    assert result.returncode == 0, f"importing {module} failed:\n{result.stderr}"
    return set(result.stdout.split())


# The modules of models/ that the engine, the bridge or a torch-free install use.
TORCH_FREE_MODELS = ["models.settings", "models.exceptions", "models.notes", "models.tokenizer",
                     "models.streaming", "models.cli", "models.model_card", "models.dataset",
                     "models.corpus"]


@pytest.mark.parametrize("module", _modules("engine") + _modules("bridge") + TORCH_FREE_MODELS)
def test_live_path_does_not_import_torch(module: str) -> None:
    assert "torch" not in _loaded_after_import(module)


@pytest.mark.parametrize("module", _modules("bridge"))
def test_bridge_does_not_import_onnxruntime_or_engine(module: str) -> None:
    loaded = _loaded_after_import(module)
    assert "onnxruntime" not in loaded
    assert "engine" not in loaded
    assert "export" not in loaded


def _imported_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", ["engine", "bridge", "models"])
def test_nothing_live_imports_export(package: str) -> None:
    # Static check: even lazy imports inside functions count.
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / package).rglob("*.py")
                 if "export" in _imported_names(p)]
    assert offenders == []


def test_models_package_init_imports_nothing() -> None:
    assert _imported_names(ROOT / "models" / "__init__.py") == set()
