"""Loading a melodyd ONNX model: its card, its tokenizer and an ONNX Runtime session.

A model file describes itself (``models.core.model_card``): architecture, vocabulary, cache
tensor names and context length. Loading checks that card, rebuilds the tokenizer from it
and opens a session whose thread pools sleep when idle, because the engine shares the
machine with a DAW that needs the cores the moment audio is due.

Installed styles are ``models/pretrained/<style>.onnx``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from engine.cache import window_feeds
from models.core.exceptions import EngineError, MelodyError
from models.core.model_card import ModelCard, card_from_metadata
from models.core.paths import PRETRAINED_DIR
from models.core.settings import EngineSettings
from models.core.tokenizer import MelodyTokenizer

logger = logging.getLogger(__name__)

_HOW_TO_MAKE = "make one from a checkpoint with `melody export`"


def installed_styles(directory: Path | None = None) -> dict[str, Path]:
    """The installed styles: name -> ONNX file, from ``directory/*.onnx`` (default the
    shipped ``models/pretrained``)."""
    directory = directory or PRETRAINED_DIR
    if not directory.is_dir():
        return {}
    return {path.stem: path for path in sorted(directory.glob("*.onnx"))}


def resolve_model_path(model: str | Path | None = None, style: str | None = None,
                       directory: Path | None = None) -> Path:
    """The ONNX file named by ``--model PATH`` or ``--style NAME``.

    Raises:
        EngineError: neither or both are given, the file does not exist, or the style
            is not installed (the message lists the installed ones).
    """
    if (model is None) == (style is None):
        raise EngineError("give either a model file (--model) or an installed style (--style)")
    if model is not None:
        path = Path(model)
        if not path.is_file():
            raise EngineError(f"model file not found: {path} ({_HOW_TO_MAKE})")
        return path
    styles = installed_styles(directory)
    if style not in styles:
        known = ", ".join(styles) or "none"
        raise EngineError(f"style {style!r} is not installed (installed: {known}); "
                          f"add {directory or 'models/pretrained'}/{style}.onnx or pass "
                          f"--model PATH")
    return styles[style]


# The oldest ONNX Runtime that runs melodyd's graphs: their GroupQueryAttention takes
# per-row query lengths (its 17th input), so rows that sit a step out stay untouched.
# pyproject.toml asks for the same (a test keeps the two equal).
MIN_ONNXRUNTIME = (1, 32)


def _runtime_too_old() -> str | None:
    """A sentence saying the installed ONNX Runtime is too old, or ``None``."""
    try:
        installed = tuple(int(part) for part in ort.__version__.split(".")[:2])
    except ValueError:  # a development build's version: let it try
        return None
    if installed >= MIN_ONNXRUNTIME:
        return None
    needed = ".".join(map(str, MIN_ONNXRUNTIME))
    return (f"onnxruntime {ort.__version__} is older than {needed}, which melodyd's models "
            f"need; upgrade it with `pip install -U 'onnxruntime>={needed}'`")


def ort_errors() -> tuple[type[BaseException], ...]:
    """The exception types ONNX Runtime raises (they derive from ``Exception`` only)."""
    names = ("Fail", "InvalidArgument", "RuntimeException", "InvalidProtobuf", "InvalidGraph",
             "NoSuchFile", "NoModel", "EPFail", "NotImplemented", "ModelLoaded")
    state = ort.capi.onnxruntime_pybind11_state
    found = tuple(getattr(state, name) for name in names if hasattr(state, name))
    return (RuntimeError, ValueError, *found)


def _providers(requested: str) -> list[str]:
    """ONNX Runtime execution providers for ``cpu`` or ``cuda`` (falling back to CPU)."""
    if requested == "cuda":
        if "CUDAExecutionProvider" in ort.get_available_providers():
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]
        logger.warning("CUDA was asked for but this onnxruntime has no CUDAExecutionProvider "
                       "(install onnxruntime-gpu); using the CPU")
    return ["CPUExecutionProvider"]


def session_options(settings: EngineSettings) -> Any:
    """Session options: thread counts from ``[engine]``, spinning off, full graph optimization.

    Spinning threads busy-wait for the next call and would take a DAW's cores while the
    engine waits for the player, so they are turned off in both pools.
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = settings.intra_op_threads
    options.inter_op_num_threads = settings.inter_op_threads
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.log_severity_level = 3  # ORT's own warnings about unused initializers are noise
    return options


@dataclass
class LoadedModel:
    """An open ONNX model with everything the decoder needs.

    Attributes:
        path: the file it came from.
        card: the validated ``melodyd`` metadata.
        tokenizer: the vocabulary rebuilt from the card.
        session: the ONNX Runtime inference session.
        providers: the execution providers in use.
    """

    path: Path
    card: ModelCard
    tokenizer: MelodyTokenizer
    session: Any
    providers: list[str]

    @property
    def style(self) -> str:
        """The style name the model is served under."""
        return self.card.style

    @property
    def context_length(self) -> int:
        """Tokens the model was trained on; the KV cache slides beyond it."""
        return self.card.context_length

    @property
    def cache_kind(self) -> str:
        """``"kv"`` or ``"rnn"``."""
        return self.card.cache.kind

    def run(self, feeds: dict[str, np.ndarray],
            outputs: list[str] | None = None) -> list[np.ndarray]:
        """One ONNX Runtime call on ``feeds``: the named outputs (default: all of the card's).

        Raises:
            EngineError: ONNX Runtime rejects the inputs or fails.
        """
        try:
            return self.session.run(outputs or list(self.card.output_names), feeds)
        except ort_errors() as err:
            raise EngineError(f"model {self.path.name} failed: {err}") from err

    def run_bound(self, binding: Any) -> None:
        """One ONNX Runtime call on an I/O binding: the outputs land in its bound arrays.

        Raises:
            EngineError: ONNX Runtime rejects the inputs or fails.
        """
        try:
            self.session.run_with_iobinding(binding)
        except ort_errors() as err:
            raise EngineError(f"model {self.path.name} failed: {err}") from err

    def forward(self, ids: Any) -> np.ndarray:
        """Logits ``[S, V]`` of one window of tokens ``ids`` [S] run from an empty cache.

        What evaluation and reference decoding need: no pool, no binding, no sampling (a
        key/value graph gets a buffer exactly as long as the window).

        Raises:
            EngineError: ONNX Runtime rejects the inputs or fails.
        """
        feeds = window_feeds(self.card.cache, np.asarray(ids, dtype=np.int64))
        (logits,) = self.run(feeds, [self.card.output_names[0]])
        return logits[0]

    def facts(self) -> dict[str, Any]:
        """What the protocol's ``hello`` says about this model."""
        return {"arch": self.card.arch, "context_length": self.context_length,
                "vocab_size": self.tokenizer.vocab_size,
                "positions_per_beat": self.tokenizer.settings.positions_per_beat,
                "quantization": self.card.quantization, "training": self.card.training,
                # Role tokens: accompany mode can ask for accompaniment under a lead.
                "roles": self.tokenizer.has_roles,
                # Style tokens: any two of them can be morphed (request.morph).
                "style_tokens": sorted(self.tokenizer.style_slots)}


def _check_io(path: Path, card: ModelCard, session: Any) -> None:
    """The graph must have the inputs and outputs its card names."""
    inputs = {node.name for node in session.get_inputs()}
    outputs = {node.name for node in session.get_outputs()}
    missing = [n for n in card.input_names if n not in inputs]
    missing += [n for n in card.output_names if n not in outputs]
    if missing:
        raise EngineError(f"{path}: the graph lacks {', '.join(missing)} named by its "
                          f"metadata; re-export it with `melody export`")


def load_model(path: str | Path, settings: EngineSettings | None = None) -> LoadedModel:
    """Open and validate a melodyd ONNX model.

    Raises:
        EngineError: the file is missing, not ONNX, not a melodyd model, its card is
            invalid, its vocabulary cannot be rebuilt, or its graph does not match its card.
    """
    path = Path(path)
    settings = settings or EngineSettings()
    if not path.is_file():
        raise EngineError(f"model file not found: {path} ({_HOW_TO_MAKE})")
    providers = _providers(settings.provider)
    try:
        session = ort.InferenceSession(str(path), sess_options=session_options(settings),
                                       providers=providers)
    except ort_errors() as err:
        too_old = _runtime_too_old()
        if too_old is not None:
            raise EngineError(f"{path} cannot be loaded: {too_old}") from err
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise EngineError(f"{path} is not a readable ONNX model ({first[:200]}); "
                          f"{_HOW_TO_MAKE}") from err
    metadata = session.get_modelmeta().custom_metadata_map
    try:
        card = card_from_metadata(metadata, str(path))
        tokenizer = MelodyTokenizer.from_dict(card.tokenizer)
    except MelodyError as err:
        raise EngineError(f"{err}; {_HOW_TO_MAKE}") from err
    _check_io(path, card, session)
    used = session.get_providers()
    logger.info("loaded style %r from %s (%s, context %d) on %s", card.style, path, card.arch,
                card.context_length, ", ".join(used))
    return LoadedModel(path=path, card=card, tokenizer=tokenizer, session=session,
                       providers=used)
