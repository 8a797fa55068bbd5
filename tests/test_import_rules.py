"""The import directions of docs/architecture.md, checked on the real modules.

Two kinds of check:
- statically, on every module's source (every ``import`` anywhere in the file, so a lazy
  import inside a function counts as much as one at the top);
- at run time, in a fresh interpreter, that importing a live module does not pull in
  torch (or, for the bridge, onnxruntime): modules imported by other tests cannot hide it.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _files(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def _imports(path: Path) -> set[str]:
    """Every absolute module name ``path`` imports, lazily or not."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


HEAVY = ("torch", "export", "bench")
# Each part: the folder, the project packages it may import, and what it must never import.
RULES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # bridge: the core only; never the engine, onnxruntime or anything heavy.
    "bridge": (("bridge", "models.core"), (*HEAVY, "onnxruntime", "engine", "music21")),
    # the live engine: itself and the core.
    "engine": (("engine", "models.core"), HEAVY),
    # the engine's tools also use data and analysis, and the jam harness the bridge's
    # policy and seed window (it plays calls through them without ports).
    "engine/tools": (("engine", "models.core", "models.data", "models.analysis", "bridge"),
                     HEAVY),
    "models/core": (("models.core",), (*HEAVY, "onnxruntime", "music21", "engine", "bridge")),
    "models/data": (("models.core", "models.data"), (*HEAVY, "onnxruntime", "engine",
                                                      "bridge")),
    "models/analysis": (("models.core", "models.data", "models.analysis"),
                        (*HEAVY, "engine", "bridge")),
    "models/train": (("models",), ("export", "bench", "engine", "bridge")),
}
PROJECT = ("models", "engine", "bridge", "export", "bench")


def _part_of(path: Path) -> str | None:
    relative = path.relative_to(ROOT).as_posix()
    for folder in sorted(RULES, key=len, reverse=True):
        if relative.startswith(folder + "/"):
            return folder
    return None


CHECKED = [p for folder in ("bridge", "engine", "models") for p in _files(folder)
           if _part_of(p) is not None]


@pytest.mark.parametrize("path", CHECKED, ids=lambda p: str(p.relative_to(ROOT)))
def test_each_module_imports_only_what_its_part_may(path: Path) -> None:
    allowed, forbidden = RULES[_part_of(path)]
    bad = sorted(name for name in _imports(path)
                 if _under(name, forbidden)
                 or (_under(name, PROJECT) and not _under(name, allowed)))
    assert bad == [], f"{path.relative_to(ROOT)} imports {bad}"


def test_the_models_package_top_level_is_only_the_dispatcher() -> None:
    # models/*.py directly: the `melody` dispatcher and the empty package marker.
    assert sorted(p.name for p in (ROOT / "models").glob("*.py")) == ["__init__.py", "cli.py"]
    assert _imports(ROOT / "models" / "__init__.py") == set()
    assert not any(_under(n, PROJECT[1:]) for n in _imports(ROOT / "models" / "cli.py"))


@pytest.mark.parametrize("package", ["engine", "bridge", "models"])
def test_nothing_live_imports_export_or_bench(package: str) -> None:
    offenders = [str(p.relative_to(ROOT)) for p in _files(package)
                 if any(_under(n, ("export", "bench")) for n in _imports(p))]
    assert offenders == []


def test_the_static_check_sees_a_lazy_import(tmp_path: Path) -> None:
    module = tmp_path / "lazy.py"
    module.write_text("def f():\n    import torch\n    from engine import server\n")
    assert {"torch", "engine", "engine.server"} <= _imports(module)


def _loaded_after_import(module: str) -> set[str]:
    code = (f"import sys, importlib; importlib.import_module({module!r}); "
            "print('\\n'.join(sorted(m.split('.')[0] for m in sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=ROOT, check=False)
    assert result.returncode == 0, f"importing {module} failed:\n{result.stderr}"
    return set(result.stdout.split())


LIVE = sorted({_module_name(p) for folder in ("engine", "bridge", "models/core")
               for p in _files(folder) if p.name != "__main__.py"} | {"models.cli"})


@pytest.mark.parametrize("module", LIVE)
def test_live_path_does_not_load_torch(module: str) -> None:
    assert "torch" not in _loaded_after_import(module)


@pytest.mark.parametrize("module", [m for m in LIVE if m.startswith("bridge")])
def test_bridge_does_not_load_onnxruntime_or_engine(module: str) -> None:
    loaded = _loaded_after_import(module)
    assert "onnxruntime" not in loaded
    assert "engine" not in loaded
