"""The protocol's version, its limits, and the names of its message types, done reasons and
error codes: each defined here once, for the engine, the bridge and docs/protocol.md's test.
"""

from __future__ import annotations

PROTOCOL_VERSION = 1

# Defaults of the limits the engine reports in ``hello``; ``[engine]`` may change the first
# four (``models.core.settings.EngineSettings`` takes its defaults from here).
MAX_MESSAGE_BYTES = 256 * 1024
MAX_SEED_NOTES = 2048
MAX_ACTIVE = 32
SESSION_IDLE_S = 600.0
MAX_ID_CHARS = 64
MAX_BARS = 64
# Beats beyond this are no real timeline (about 58 days at 120 BPM); it keeps bar
# arithmetic far away from float precision trouble. Absolute positions this large are
# fine: the engine encodes the seed relative to its first bar, so only distances cost.
MAX_BEAT = 1e7
# What a request may span, in beats. A bridge's seed window is a few bars (``[interaction]
# seed_bars``, at most 64: 384 beats of 12/8), and it asks for the bar after the player's
# phrase. Both limits are far above that, and far below the tokenizer's int32 ticks (~4.47
# million beats). The engine's prompt no longer encodes bars its budget would drop, so
# a longer request would not stall it either; the limits make such a request a clear
# refusal, naming what was sent, instead of an answer that silently ignores the seed.
# From the seed's first onset to the latest end (onset + duration) of its notes; also the
# longest note.
MAX_SEED_SPAN_BEATS = 1024.0
# From that end of the seed to ``start_beat`` (a start before it is fine: seed notes at or
# after the start are ignored).
MAX_START_DISTANCE_BEATS = 1024.0
# Integer literals longer than this are never parsed into ints: no field holds one (the
# largest, ``sampling.seed``, has 19 digits), and Python refuses to convert more than
# ``sys.get_int_max_str_digits()`` digits, which can be set as low as 640.
MAX_INT_DIGITS = 600
MAX_SAMPLING_SEED = 2**63 - 1
MAX_TOP_K = 1_000_000
TEMPERATURE_RANGE = (0.05, 5.0)
MAX_POLYPHONY = 16
# Best-of-N: candidates decoded per bar of an answer (each is one more row of the batched
# model call; 8 rows already cost the 2-core CPU about 4 rows' time, see docs/jam.md).
MAX_CANDIDATES = 8
# Chord hints in one request's steering: one a beat over MAX_BARS bars of 4/4 is plenty.
MAX_CHORD_HINTS = 256
# The style name of a style-conditioned model's unconditioned slot (slot 0, trained by
# style dropout): a request may name it, and a morph from it is style guidance.
STYLE_ANY = "any"
# morph.amount: 0-1 blends towards the other style; below 0 pushes away from it (from the
# "any" style: classifier-free guidance, the request's style made stronger).
MORPH_AMOUNT_RANGE = (-4.0, 1.0)
# The tempo a deadline is reckoned at (``candidates.bpm``), and the furthest deadline.
BPM_RANGE = (1.0, 1000.0)
MAX_READY_MS = 3_600_000.0
# A reply is the engine's own small JSON; one this large is not from our engine.
MAX_REPLY_BYTES = 4 * 1024 * 1024

REQUEST_TYPES = ("hello", "ping", "stats", "generate", "cancel")
REPLY_TYPES = ("hello", "pong", "stats", "notes", "done", "error")
DONE_REASONS = ("complete", "eos", "cancelled", "superseded", "max_tokens")
ERROR_CODES = {
    "bad_json": "the frame is not UTF-8 JSON, or not a JSON object",
    "too_large": "the frame exceeds the size limit",
    "bad_version": "`v` is missing or not 1",
    "unknown_type": "`type` is not a known request",
    "invalid": "a field is missing, unknown, of the wrong type or out of range",
    "unknown_style": "`style` is not loaded by this engine",
    "unsupported": "the loaded model cannot serve the request as asked",
    "duplicate_id": "a `generate` with this `id` is already running for this client",
    "not_found": "`cancel` names no running request",
    "busy": "the engine holds its maximum of active requests",
    "internal": "a bug in the engine; the request is dropped, the engine keeps serving",
}
