"""Fixtures shared by every test package: tiny random ONNX models, and the no-skip mode.

The engine and bridge tests need real model files. Those they use are built by
``tests/fixtures/make_tiny_models.py`` (random weights, the default or a conditioned
vocabulary, the same export as ``melody export``) and committed under
``tests/fixtures/models/``:

- with torch and music21 installed (the train extra) each is rebuilt once per session,
  so the whole suite exercises the current export code (and ``test_tiny_fixtures.py``
  checks that the committed files still equal the rebuilt ones);
- without them (the torch-free install of the live path) the committed files are used.

``MELODYD_NO_SKIPS=1`` turns every skip into a failure: CI's torch-free job sets it, so a
live-path test that cannot run there (a model it cannot find, no JACK server, no native
JACK client) fails instead of passing quietly.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

# The build script lives with the files it writes; importlib mode puts no test folder on
# the path.
sys.path.insert(0, str(Path(__file__).parent / "fixtures"))

import make_tiny_models  # after the path above

NO_SKIPS = "MELODYD_NO_SKIPS"
# Architecture -> committed model, for ``tiny_onnx_factory``.
ARCH_MODELS = {"gpt": "tiny", "lstm": "tiny-lstm", "gru": "tiny-gru"}


def _installed(*modules: str) -> bool:
    return all(importlib.util.find_spec(module) is not None for module in modules)


def _tiny_model(name: str, directory: Path) -> Path:
    """The tiny model ``name``: built into ``directory`` with the train extra, else the
    committed file."""
    # The int8 export's agreement check tokenizes music21 chorales.
    needs = ("torch", "onnx", "music21") if make_tiny_models.MODELS[name].int8 else (
        "torch", "onnx")
    if _installed(*needs):
        path = directory / make_tiny_models.MODELS[name].file
        return path if path.exists() else make_tiny_models.build(name, directory)
    committed = make_tiny_models.MODELS[name].committed
    if not committed.exists():
        pytest.skip(f"{committed} is missing and cannot be built without the train extra "
                    f"(python tests/fixtures/make_tiny_models.py {name})")
    return committed


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A session-wide folder holding the tiny checkpoints and ONNX files built here."""
    return tmp_path_factory.mktemp("tiny_models")


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_model_dir: Path) -> Path:
    """The checkpoint of ``tiny_onnx_model`` (a random narrow tiny GPT, seed 0); torch."""
    pytest.importorskip("torch", reason="checkpoints are built with torch (the train extra)")
    return make_tiny_models.build_checkpoint("tiny", tiny_model_dir)


@pytest.fixture(scope="session")
def tiny_onnx_model(tiny_model_dir: Path) -> Path:
    """The fp32 ONNX model of ``tiny_checkpoint`` (style ``tiny``), with its card."""
    return _tiny_model("tiny", tiny_model_dir)


@pytest.fixture(scope="session")
def tiny_onnx_int8_model(tiny_model_dir: Path) -> Path:
    """The weight-only int8 export of ``tiny_checkpoint`` (style ``tiny-int8``)."""
    return _tiny_model("tiny-int8", tiny_model_dir)


@pytest.fixture(scope="session")
def tiny_onnx_factory(tiny_model_dir: Path) -> Callable[[str], Path]:
    """``make(arch)`` -> the fp32 ONNX model of a random tiny ``gpt``/``lstm``/``gru``.

    The ``gpt`` one is ``tiny_onnx_model``; the recurrent ones are styles ``tiny-<arch>``.
    """
    def make(arch: str = "gpt") -> Path:
        return _tiny_model(ARCH_MODELS[arch], tiny_model_dir)

    return make


# The named styles of the conditioned vocabulary (see models.core.tokenizer).
CONDITIONED_STYLES = make_tiny_models.CONDITIONED_STYLES


@pytest.fixture(scope="session")
def tiny_conditioned_onnx(tiny_model_dir: Path) -> Path:
    """A fp32 ONNX model of a random tiny GPT over a vocabulary with 8 style slots
    (``CONDITIONED_STYLES`` named) and role tokens; its style name is ``tiny-conditioned``."""
    return _tiny_model("tiny-conditioned", tiny_model_dir)


@pytest.fixture(scope="session")
def tiny_conditioned_checkpoint(tiny_model_dir: Path) -> Path:
    """The checkpoint of ``tiny_conditioned_onnx`` (8 style slots, 3 named, roles); torch."""
    pytest.importorskip("torch", reason="checkpoints are built with torch (the train extra)")
    return make_tiny_models.build_checkpoint("tiny-conditioned", tiny_model_dir)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None],
                              ) -> Iterator[None]:
    """With ``MELODYD_NO_SKIPS=1``, a skipped test is reported as failed, with its reason."""
    outcome = yield
    report = outcome.get_result()
    if os.environ.get(NO_SKIPS) == "1" and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped, and {NO_SKIPS}=1 allows no skips: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Iterator[None]:
    """With ``MELODYD_NO_SKIPS=1``, a module skipped as a whole is a collection error."""
    outcome = yield
    report = outcome.get_result()
    if os.environ.get(NO_SKIPS) == "1" and report.skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped, and {NO_SKIPS}=1 allows no skips: {reason}"
