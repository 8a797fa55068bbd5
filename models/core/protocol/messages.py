"""What a generation request asks for, independent of how it arrived (zmq or CLI).

``models.core.protocol.wire`` validates JSON into these; ``engine.decoder`` consumes them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from models.core.notes import Note


@dataclass(frozen=True)
class SamplingParams:
    """How the next token is drawn from the logits.

    Attributes:
        temperature: logits are divided by it before softmax (lower = more predictable).
        top_k: keep the k most likely tokens (0 = off).
        top_p: keep the smallest set whose probability reaches p (1.0 = off).
        min_p: drop tokens less likely than ``min_p`` times the most likely (0 = off).
        seed: seed of the sampler's random generator; ``None`` draws a fresh one.
        greedy: take the most likely token (ignores the other fields); for tests and parity.
    """

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    seed: int | None = None
    greedy: bool = False


@dataclass(frozen=True)
class Constraints:
    """Musical limits the bridge can ask for; enforced by masking logits.

    Attributes:
        pitch_min: lowest pitch allowed.
        pitch_max: highest pitch allowed.
        scale: pitch classes (0 = C) allowed, or ``None`` for all twelve.
        max_polyphony: most notes sounding at once, or ``None`` for no limit.
        role: generate only notes of this role (``lead``, ``accompaniment``, ``any``), or
            ``None`` for any mix; needs a model whose vocabulary has role tokens.
    """

    pitch_min: int = 21
    pitch_max: int = 108
    scale: tuple[int, ...] | None = None
    max_polyphony: int | None = None
    role: str | None = None


@dataclass(frozen=True)
class GenerateRequest:
    """One response to generate.

    Attributes:
        seed: the player's recent notes on the caller's beat timeline.
        start_beat: where the response starts on that timeline.
        bars: the response ends at the start of bar ``bar_of(start_beat) + bars``.
        time_signature: ``(numerator, denominator)``; bar ``k`` starts at ``k * bar_length``.
        style: which loaded model answers.
        sampling: how tokens are drawn.
        constraints: musical limits.
    """

    seed: tuple[Note, ...]
    start_beat: float
    bars: int = 2
    time_signature: tuple[int, int] = (4, 4)
    style: str = ""
    sampling: SamplingParams = field(default_factory=SamplingParams)
    constraints: Constraints = field(default_factory=Constraints)

    @property
    def bar_length(self) -> float:
        """Length of one bar in quarter-note beats."""
        return self.time_signature[0] * 4.0 / self.time_signature[1]
