"""Settings: ``config.toml`` loaded into one frozen dataclass per section.

The repository's ``config.toml`` holds every default. A user file given with ``--config``
is merged over it, and command-line flags override both (``overrides``). Every value is
checked against the type and range declared on its field; a bad value names the key and
the value received, and an unknown key gets a "did you mean".

Torch-free: the engine and the bridge load their settings through this module.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, get_type_hints

from models.core.chords import parse_chord_loop
from models.core.exceptions import ConfigError, ProtocolError
from models.core.meter import parse_time_signature
from models.core.paths import default_config_path
from models.core.protocol import fields as protocol_fields
from models.core.protocol import limits as protocol_limits
from models.core.protocol.messages import Candidates, Constraints, SamplingParams

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


# Style names travel in protocol messages, file names and token configurations.
# Named GPT sizes of `melody train --size` (their shapes: models/train/gpt.py SIZES).
MODEL_SIZES = ("tiny", "small", "base", "medium")
_STYLE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def setting(default: Any, *, low: float | None = None, high: float | None = None,
            choices: tuple[Any, ...] | None = None) -> Any:
    """Declare a dataclass field with an allowed range or set of values."""
    meta = {"low": low, "high": high, "choices": choices}
    if isinstance(default, (list, dict)):
        raise TypeError("use tuples for sequence defaults so settings stay immutable")
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass(frozen=True)
class DataSettings:
    """``[data]``: how ``melody data build`` reads, filters and splits MIDI files."""

    jobs: int = setting(0, low=0, high=256)
    val_fraction: float = setting(0.1, low=0.0, high=0.5)
    test_fraction: float = setting(0.1, low=0.0, high=0.5)
    seed: int = setting(0, low=0)
    transpose_min: int = setting(0, low=-12, high=0)
    transpose_max: int = setting(0, low=0, high=12)
    monophonic: bool = setting(False)
    max_file_bytes: int = setting(4_000_000, low=1)
    min_notes: int = setting(8, low=1)
    max_tokens: int = setting(250_000, low=16)
    max_empty_bars: int = setting(64, low=0)
    data_root: str = setting("")
    convert_timeout: float = setting(600.0, low=0.0)

    def check(self) -> None:
        """Cross-field rule: validation and test together leave pieces to train on."""
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ConfigError(
                f"[data] val_fraction + test_fraction must be below 1 (received "
                f"{self.val_fraction} + {self.test_fraction})")


@dataclasses.dataclass(frozen=True)
class TokensSettings:
    """``[tokens]``: the REMI-like vocabulary (see ``models.core.tokenizer``)."""

    pitch_min: int = setting(21, low=0, high=127)
    pitch_max: int = setting(108, low=0, high=127)
    positions_per_beat: int = setting(12, low=1, high=48)
    max_duration_beats: int = setting(8, low=1, high=32)
    num_velocities: int = setting(16, low=1, high=127)
    time_signatures: tuple[str, ...] = setting(
        ("2/4", "3/4", "4/4", "5/4", "6/4", "3/8", "6/8", "9/8", "12/8", "2/2", "3/2"))
    # Conditioning (see models.core.tokenizer). The defaults are the vocabulary of the models
    # trained before conditioning existed: no Style and no Role tokens.
    style_slots: int = setting(0, low=0, high=256)
    styles: tuple[str, ...] = setting(())
    roles: bool = setting(False)

    def check(self) -> None:
        """Cross-field rules: an ordered pitch range, well-formed time signatures, and
        style names that fit the reserved style slots."""
        if self.pitch_min > self.pitch_max:
            raise ConfigError(f"[tokens] pitch_min must be <= pitch_max "
                              f"(received {self.pitch_min} > {self.pitch_max})")
        for text in self.time_signatures:
            if not isinstance(text, str):
                raise ConfigError(f"[tokens] time_signatures holds strings like \"3/4\" "
                                  f"(received {text!r})")
            try:
                parse_time_signature(text)
            except ValueError as err:
                raise ConfigError(f"[tokens] time_signatures: {err}") from err
        self._check_styles()

    def _check_styles(self) -> None:
        # Slot 0 is "any style" (style dropout, unknown styles): names take slots 1, 2, ...
        if self.styles and len(self.styles) >= self.style_slots:
            raise ConfigError(f"[tokens] styles names {len(self.styles)} styles, but "
                              f"style_slots {self.style_slots} leaves "
                              f"{max(0, self.style_slots - 1)} slots after slot 0 (\"any\")")
        seen: set[str] = set()
        for name in self.styles:
            if not isinstance(name, str) or not _STYLE_NAME.match(name) or name == "any":
                raise ConfigError(f"[tokens] styles holds plain names other than \"any\" "
                                  f"(received {name!r})")
            if name in seen:
                raise ConfigError(f"[tokens] styles names {name!r} twice")
            seen.add(name)


@dataclasses.dataclass(frozen=True)
class EngineSettings:
    """``[engine]``: ONNX Runtime sessions and the decoder (see ``engine.model``)."""

    provider: str = setting("cpu", choices=("cpu", "cuda"))
    intra_op_threads: int = setting(1, low=0, high=64)
    inter_op_threads: int = setting(1, low=0, high=64)
    sink_tokens: int = setting(4, low=0, high=64)
    slide_fraction: float = setting(0.25, low=0.01, high=0.9)
    max_tokens_per_bar: int = setting(256, low=8, high=4096)
    max_cached_sessions: int = setting(64, low=1, high=4096)
    prefill_chunk: int = setting(64, low=0, high=65_536)
    prefill_chunk_ms: float = setting(15.0, low=0.0, high=10_000.0)
    # The zmq service (see ``engine.server`` and docs/protocol.md).
    bind: str = setting("tcp://127.0.0.1:5757")
    curve_server_secret: str = setting("")
    curve_clients_dir: str = setting("")
    max_message_bytes: int = setting(protocol_limits.MAX_MESSAGE_BYTES, low=1024,
                                     high=16_777_216)
    max_seed_notes: int = setting(protocol_limits.MAX_SEED_NOTES, low=1, high=65_536)
    max_active: int = setting(protocol_limits.MAX_ACTIVE, low=1, high=1024)
    session_idle_s: float = setting(protocol_limits.SESSION_IDLE_S, low=1.0, high=604_800.0)
    # Where `melodyd` finds an engine; empty = start a private engine child process.
    connect: str = setting("")


@dataclasses.dataclass(frozen=True)
class MidiSettings:
    """``[midi]``: the daemon's ports, output channel, lateness bound and CC controls."""

    backend: str = setting("auto", choices=("auto", "alsa", "jack", "coremidi", "windows"))
    jack_client: str = setting("native", choices=("native", "rtmidi"))
    in_port: str = setting("melodyd in")
    out_port: str = setting("melodyd out")
    connect_in: str = setting("")
    connect_out: str = setting("")
    input_channel: int = setting(0, low=0, high=16)
    output_channel: int = setting(1, low=1, high=16)
    late_drop_ms: float = setting(25.0, low=0.0, high=1000.0)
    output_latency_ms: float = setting(0.0, low=0.0, high=100.0)
    cc_temperature: int = setting(21, low=-1, high=127)
    cc_length: int = setting(22, low=-1, high=127)
    cc_mode: int = setting(23, low=-1, high=127)
    cc_style: int = setting(24, low=-1, high=127)
    cc_panic: int = setting(120, low=-1, high=127)
    cc_key_lock: int = setting(25, low=-1, high=127)
    cc_follow: int = setting(26, low=-1, high=127)
    cc_accompany_density: int = setting(27, low=-1, high=127)
    cc_accompany_key_strength: int = setting(28, low=-1, high=127)
    cc_morph: int = setting(29, low=-1, high=127)


@dataclasses.dataclass(frozen=True)
class ClockSettings:
    """``[clock]``: the daemon's beat timeline (internal tempo or the DAW's MIDI clock)."""

    source: str = setting("internal", choices=("internal", "midi"))
    bpm: float = setting(120.0, low=20.0, high=400.0)
    time_signature: str = setting("4/4")
    smoothing_ticks: int = setting(24, low=2, high=96)

    def check(self) -> None:
        """Reject a time signature the engine would refuse (``models.core.meter``)."""
        try:
            parse_time_signature(self.time_signature)
        except ValueError as err:
            raise ConfigError(f"[clock] time_signature: {err}") from err


@dataclasses.dataclass(frozen=True)
class InteractionSettings:
    """``[interaction]``: when and how long the daemon answers (see ``bridge.policy``)."""

    mode: str = setting("call", choices=("call", "accompany"))
    silence_beats: float = setting(1.0, low=0.25, high=32.0)
    response_bars: int = setting(2, low=1, high=64)
    start_on: str = setting("bar", choices=("bar", "beat"))
    min_lead_ms: float = setting(40.0, low=0.0, high=2000.0)
    seed_bars: int = setting(4, low=1, high=64)
    barge_in: bool = setting(True)
    trade_bars: int = setting(0, low=0, high=16)
    trade_lead_beats: float = setting(0.5, low=0.0, high=4.0)
    request_ahead_beats: float = setting(1.5, low=0.0, high=8.0)
    follow_dynamics: float = setting(0.7, low=0.0, high=1.0)
    status_interval_s: float = setting(1.0, low=0.0, high=60.0)
    key_follow: bool = setting(True)
    key_strength: float = setting(0.5, low=0.0, high=20.0)
    key_margin: float = setting(0.1, low=0.0, high=1.0)
    register_follow: bool = setting(True)
    register_width: float = setting(7.0, low=0.0, high=127.0)
    register_strength: float = setting(3.0, low=0.0, high=20.0)
    density_follow: bool = setting(True)
    density_strength: float = setting(2.0, low=0.0, high=20.0)
    min_notes_per_bar: int = setting(1, low=0, high=32)
    accompany_stop_bars: int = setting(2, low=1, high=64)
    accompany_below_lead: bool = setting(True)
    accompany_density: float = setting(1.5, low=0.1, high=8.0)
    accompany_key_strength: float = setting(0.5, low=0.0, high=20.0)
    accompany_polyphony: int = setting(4, low=0, high=16)
    chords: str = setting("")
    chord_strength: float = setting(6.0, low=0.0, high=20.0)
    morph_style: str = setting("")
    morph_amount: float = setting(0.0, low=-4.0, high=1.0)
    style_guidance: float = setting(1.0, low=1.0, high=5.0)

    def check(self) -> None:
        """Reject a chord loop the engine could not be given (``models.core.chords``)."""
        if self.chords.strip():
            try:
                parse_chord_loop(self.chords)
            except ValueError as err:
                raise ConfigError(f"[interaction] chords: {err}") from err


@dataclasses.dataclass(frozen=True)
class SamplingSettings:
    """``[sampling]``: how the engine draws tokens and the musical limits it enforces."""

    temperature: float = setting(1.0, low=0.05, high=5.0)
    top_k: int = setting(0, low=0, high=100_000)
    top_p: float = setting(0.95, low=0.0, high=1.0)
    min_p: float = setting(0.0, low=0.0, high=1.0)
    seed: int = setting(-1, low=-1)
    pitch_min: int = setting(21, low=0, high=127)
    pitch_max: int = setting(108, low=0, high=127)
    scale: tuple[int, ...] = setting(())
    max_polyphony: int = setting(0, low=0, high=16)
    candidates: int = setting(8, low=1, high=protocol_limits.MAX_CANDIDATES)
    candidates_lead_beats: float = setting(1.0, low=0.0, high=16.0)

    def check(self) -> None:
        """Cross-field rules: an ordered pitch range, pitch classes 0-11, and nothing the
        engine would refuse in the ``sampling`` and ``constraints`` sent from this section
        (checked by the protocol's own rules, e.g. ``top_p`` above 0, no repeated class)."""
        if self.pitch_min > self.pitch_max:
            raise ConfigError(f"[sampling] pitch_min must be <= pitch_max "
                              f"(received {self.pitch_min} > {self.pitch_max})")
        bad = [pc for pc in self.scale if not isinstance(pc, int) or not 0 <= pc <= 11]
        if bad:
            raise ConfigError(f"[sampling] scale holds pitch classes 0-11 (received {bad!r})")
        try:
            protocol_fields.sampling(self.sampling_params().to_json())
            protocol_fields.constraints(self.constraints().to_json())
        except ProtocolError as err:
            # "sampling.top_p must be above 0.0 ..." -> "[sampling] top_p must be ..."
            text = str(err).removeprefix("sampling.").removeprefix("constraints.")
            raise ConfigError(f"[sampling] {text}; the engine would refuse it") from err

    def sampling_params(self, temperature: float | None = None) -> SamplingParams:
        """The protocol's ``sampling`` of this section (``seed`` -1 draws a fresh one).

        Args:
            temperature: the live temperature (a CC may have changed it); the section's
                when ``None``.
        """
        return SamplingParams(
            temperature=self.temperature if temperature is None else temperature,
            top_k=self.top_k, top_p=self.top_p, min_p=self.min_p,
            seed=None if self.seed < 0 else self.seed)

    def candidates_for(self, *, now_beat: float | None, start_beat: float,
                       bpm: float | None) -> Candidates:
        """The protocol's ``candidates`` of this section for an answer asked for at
        ``now_beat`` to start at ``start_beat``: its notes are wanted
        ``candidates_lead_beats`` before they sound (never before now).

        Args:
            now_beat: the beat the request leaves at (``None``: unknown, no deadline).
            start_beat: where the answer starts.
            bpm: the tempo now (``None``: unknown, no deadline).
        """
        if self.candidates <= 1 or now_beat is None or not bpm:
            return Candidates(n=self.candidates)
        ready_beats = max(0.0, start_beat - now_beat - self.candidates_lead_beats)
        return Candidates(n=self.candidates, bpm=float(bpm),
                          ready_ms=ready_beats * 60_000.0 / bpm)

    def constraints(self, pitch_range: tuple[int, int] | None = None) -> Constraints:
        """The protocol's ``constraints`` of this section (an empty scale and a
        ``max_polyphony`` of 0 mean no limit).

        Args:
            pitch_range: the range to ask for (within the style's, see
                ``bridge.requests.style_pitch_range``); the section's when ``None``.
        """
        low, high = pitch_range or (self.pitch_min, self.pitch_max)
        return Constraints(pitch_min=low, pitch_max=high, scale=tuple(self.scale) or None,
                           max_polyphony=self.max_polyphony or None)


@dataclasses.dataclass(frozen=True)
class StylesSettings:
    """``[styles]``: where installed style models live and which one plays by default."""

    default: str = setting("romantic")
    directory: str = setting("")


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    """``[train]``: defaults of ``melody train``, ``fine-tune`` and ``lr-find``."""

    arch: str = setting("gpt", choices=("gpt", "lstm", "gru"))
    size: str = setting("small", choices=MODEL_SIZES)
    steps: int = setting(20_000, low=1)
    batch_size: int = setting(16, low=1, high=4096)
    lr: float = setting(1e-3, low=0.0, high=1.0)
    min_lr_ratio: float = setting(0.1, low=0.0, high=1.0)
    warmup_steps: int = setting(200, low=0)
    weight_decay: float = setting(0.1, low=0.0, high=1.0)
    beta1: float = setting(0.9, low=0.0, high=0.999999)
    beta2: float = setting(0.95, low=0.0, high=0.999999)
    grad_clip: float = setting(1.0, low=0.0)
    dropout: float = setting(0.1, low=0.0, high=0.9)
    eval_every: int = setting(250, low=1)
    eval_batches: int = setting(10, low=1)
    log_every: int = setting(10, low=1)
    seed: int = setting(0, low=0)
    threads: int = setting(0, low=0, high=256)
    time_budget: float = setting(0.0, low=0.0)
    device: str = setting("auto", choices=("auto", "cpu", "cuda"))
    precision: str = setting("auto", choices=("auto", "fp32", "bf16", "fp16"))
    freeze: int = setting(2, low=0, high=64)
    finetune_steps: int = setting(2_000, low=1)
    finetune_lr: float = setting(3e-4, low=0.0, high=1.0)
    balance_styles: bool = setting(True)
    balance_power: float = setting(0.5, low=0.0, high=1.0)
    style_dropout: float = setting(0.1, low=0.0, high=1.0)


@dataclasses.dataclass(frozen=True)
class Settings:
    """All sections of ``config.toml``."""

    data: DataSettings = dataclasses.field(default_factory=DataSettings)
    tokens: TokensSettings = dataclasses.field(default_factory=TokensSettings)
    engine: EngineSettings = dataclasses.field(default_factory=EngineSettings)
    train: TrainSettings = dataclasses.field(default_factory=TrainSettings)
    midi: MidiSettings = dataclasses.field(default_factory=MidiSettings)
    clock: ClockSettings = dataclasses.field(default_factory=ClockSettings)
    interaction: InteractionSettings = dataclasses.field(default_factory=InteractionSettings)
    sampling: SamplingSettings = dataclasses.field(default_factory=SamplingSettings)
    styles: StylesSettings = dataclasses.field(default_factory=StylesSettings)


def _did_you_mean(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _check_value(where: str, field: dataclasses.Field, hint: Any, value: Any) -> Any:
    """Coerce and range-check one value; raise ConfigError naming ``where`` and ``value``."""
    origin = getattr(hint, "__origin__", None)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false (received {value!r})")
    elif hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer (received {value!r})")
    elif hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number (received {value!r})")
        value = float(value)
    elif hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string (received {value!r})")
    elif origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list (received {value!r})")
        value = tuple(value)
    meta = field.metadata
    low, high, choices = meta.get("low"), meta.get("high"), meta.get("choices")
    if choices is not None and value not in choices:
        allowed = ", ".join(repr(c) for c in choices)
        raise ConfigError(f"{where} must be one of {allowed} (received {value!r})")
    if low is not None and high is not None and not low <= value <= high:
        raise ConfigError(f"{where} must be within {low} and {high} (received {value!r})")
    if low is not None and value < low:
        raise ConfigError(f"{where} must be at least {low} (received {value!r})")
    if high is not None and value > high:
        raise ConfigError(f"{where} must be at most {high} (received {value!r})")
    return value


def clamp_to_setting(section: Any, name: str, value: float) -> float:
    """``value`` within the range the setting ``name`` of ``section`` allows (a live knob
    may scale a setting, never past what the config file could say)."""
    meta = next(f.metadata for f in dataclasses.fields(section) if f.name == name)
    low, high = meta.get("low"), meta.get("high")
    if low is not None:
        value = max(low, value)
    if high is not None:
        value = min(high, value)
    return value


def _build_section(name: str, cls: type, values: Mapping[str, Any]) -> Any:
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            raise ConfigError(f"unknown setting [{name}] {key}{_did_you_mean(key, list(fields))}")
        kwargs[key] = _check_value(f"[{name}] {key}", fields[key], hints[key], value)
    section = cls(**kwargs)
    check = getattr(section, "check", None)
    if check is not None:
        check()  # cross-field rules, e.g. pitch_min <= pitch_max
    return section


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    merged = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key].update(value)
        else:
            merged[key] = value
    return merged


def read_toml(path: Path) -> dict[str, Any]:
    """Read a TOML file; a missing or malformed file raises ConfigError naming it."""
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError as err:
        raise ConfigError(f"config file not found: {path}") from err
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"config file {path} is not valid TOML: {err}") from err


def settings_from_dict(raw: Mapping[str, Any]) -> Settings:
    """Validate a parsed config (sections of key/values) into ``Settings``."""
    sections = {f.name: f for f in dataclasses.fields(Settings)}
    hints = get_type_hints(Settings)
    built = {}
    for name, values in raw.items():
        if name not in sections:
            raise ConfigError(f"unknown section [{name}]{_did_you_mean(name, list(sections))}")
        if not isinstance(values, Mapping):
            raise ConfigError(f"[{name}] must be a table of settings (received {values!r})")
        built[name] = _build_section(name, hints[name], values)
    return Settings(**built)


def load_settings(path: str | Path | None = None,
                  overrides: Mapping[str, Mapping[str, Any]] | None = None) -> Settings:
    """Load the defaults, merge a user file and flag overrides, and validate everything.

    Args:
        path: a user config file merged over the packaged defaults.
        overrides: ``{section: {key: value}}`` from command-line flags; ``None`` values
            are ignored so that unset flags keep the file's value.

    Raises:
        ConfigError: a missing or malformed file, an unknown section or key, or a value
            of the wrong type or out of range.
    """
    raw = read_toml(default_config_path())
    if path is not None:
        raw = _merge(raw, read_toml(Path(path)))
    if overrides:
        cleaned = {s: {k: v for k, v in kv.items() if v is not None} for s, kv in overrides.items()}
        raw = _merge(raw, cleaned)
    return settings_from_dict(raw)
