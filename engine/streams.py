"""The running ``generate`` streams and the sessions behind them, without any socket.

``engine.server`` owns the zmq socket and hands every reply to a ``send`` callback;
this module decides what to send: it starts generations on the style decoders, advances
all running generations of a style with one batched ``StyleDecoder.step``, streams their
notes, ends them with ``done``, and forgets idle sessions. It runs on the server's thread
only, so it needs no lock.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from models.core.exceptions import ProtocolError
from models.core.protocol.messages import (
    Constraints,
    DoneReply,
    ErrorReply,
    GenerateMessage,
    NotesReply,
    Reply,
)
from models.core.settings import EngineSettings

logger = logging.getLogger(__name__)

SessionKey = tuple[bytes, str]   # (client identity, the client's session name)
StreamKey = tuple[bytes, str]    # (client identity, the generate's id)
Send = Callable[[bytes, Reply], None]


@dataclass
class Stream:
    """One ``generate`` being served.

    Attributes:
        generation: the decoder's handle (``engine.decoder.Generation``).
        style: which decoder advances it.
        identity: the ROUTER identity of the client that asked.
        request_id: the client's ``id``, echoed on every reply.
        session_key: (identity, session): the cache it reads and refreshes.
        notes_sent: notes streamed so far (reported in ``done``).
    """

    generation: Any
    style: str
    identity: bytes
    request_id: str
    session_key: SessionKey
    notes_sent: int = 0

    @property
    def key(self) -> StreamKey:
        """Ids are chosen by clients, so they are unique per client only."""
        return self.identity, self.request_id


def _next_prompt(stream: Stream) -> list[int]:
    """The prompt tokens the stream's next chunk comes from (a morph's twin's too; decoder
    doubles have none)."""
    next_prompt = getattr(stream.generation, "next_prompt", None)
    return next_prompt() if next_prompt is not None else []


def _prefilling(stream: Stream) -> bool:
    """Whether the stream's prompt still has chunks to run."""
    return bool(_next_prompt(stream))


def decoder_facts(decoder: Any) -> dict[str, Any]:
    """What ``hello`` tells about one style's model (and what offline tools build their
    requests from, as melodyd builds them from ``hello``)."""
    model = getattr(decoder, "model", None)
    facts = getattr(model, "facts", None)
    result = dict(facts()) if facts is not None else {}
    # The range ``constraints.pitch_min/pitch_max`` must stay in for this style.
    pitches = vocabulary_pitch_range(decoder)
    if pitches is not None:
        result["pitch_min"], result["pitch_max"] = pitches
    return result


def vocabulary_pitch_range(decoder: Any) -> tuple[int, int] | None:
    """The pitches a style's vocabulary is meant to play (``[tokens] pitch_min/max``).

    ``None`` for a decoder without a tokenizer (test doubles).
    """
    settings = getattr(getattr(decoder, "tokenizer", None), "settings", None)
    if settings is None:
        return None
    return int(settings.pitch_min), int(settings.pitch_max)


def check_pitch_range(style: str, decoder: Any, constraints: Constraints) -> None:
    """Refuse a requested pitch range that leaves the style's vocabulary range.

    The protocol admits MIDI's 0-127; the range a model plays is its vocabulary's. The
    vocabulary also holds a token for ``pitch_max + 1`` (MidiTok's pitch range is
    inclusive and the tokenizer passes ``pitch_max + 1``; kept so shipped models still
    load), so without this check a ``pitch_max`` of 109 or more could yield pitch 109.

    Raises:
        ProtocolError: ``invalid``, naming the field, the value and the style's range.
    """
    allowed = vocabulary_pitch_range(decoder)
    if allowed is None:
        return
    low, high = allowed
    for name in ("pitch_min", "pitch_max"):
        value = getattr(constraints, name)
        if not low <= value <= high:
            raise ProtocolError("invalid", f"constraints.{name} must be within {low} and "
                                f"{high}, the pitch range of style {style!r} "
                                f"(received {value})")


@dataclass
class StyleCounters:
    """How one style's decoder was driven."""

    steps: int = 0      # batched decoder.step calls
    rows: int = 0       # generations advanced by them (rows / steps = mean batch)
    max_batch: int = 0


class Streams:
    """Every running stream and known session of the engine."""

    def __init__(self, decoders: Mapping[str, Any], settings: EngineSettings,
                 send: Send) -> None:
        """Track streams over ``decoders`` (style -> ``StyleDecoder``), replying via ``send``.

        ``send`` may call ``drop_client`` re-entrantly when a client cannot be reached.
        """
        self.decoders = decoders
        self.settings = settings
        self._send = send
        self.running: dict[StreamKey, Stream] = {}
        # The stream currently using each session's cache (at most one).
        self._by_session: dict[SessionKey, StreamKey] = {}
        # Sessions the decoders may hold a cache for, with the time they were last used,
        # least recently used first, so expiry looks at the front only.
        self.sessions: OrderedDict[SessionKey, float] = OrderedDict()
        self.requests = 0
        self.errors = 0
        self.tokens = 0
        self.counters = {style: StyleCounters() for style in decoders}

    # --- requests ------------------------------------------------------------------------

    def start(self, identity: bytes, message: GenerateMessage) -> None:
        """Start a generate and send what is already complete.

        Raises:
            ProtocolError: ``unknown_style``, ``invalid`` (a pitch range outside the
                style's vocabulary), ``duplicate_id`` or ``busy``.
            EngineError: the decoder cannot serve the request (e.g. its time signature).
        """
        style = message.request.style
        decoder = self.decoders.get(style)
        if decoder is None:
            raise ProtocolError("unknown_style", f"style {style!r} is not loaded "
                                f"(loaded: {', '.join(self.decoders)})")
        check_pitch_range(style, decoder, message.request.constraints)
        morph = message.request.morph
        if morph is not None and (self.decoders.get(morph.style) is not decoder
                                  or not decoder.tokenizer.style_slots):
            raise ProtocolError("unsupported", f"morph.style {morph.style!r} is not a style "
                                f"token of {style!r}'s model (a style-conditioned model "
                                f"blends two of its own styles)")
        key = (identity, message.id)
        if key in self.running:
            raise ProtocolError("duplicate_id",
                                f"a generate with id {message.id!r} is already running")
        session_key = (identity, message.session)
        previous = self._by_session.get(session_key)
        # A newer request for the same jam replaces the running one: its answer is stale,
        # and one session's cache can feed only one generation at a time.
        if previous is not None:
            self._cancel(self.running[previous], "superseded")
        if len(self.running) >= self.settings.max_active:
            raise ProtocolError("busy", f"the engine is running its maximum of "
                                f"{self.settings.max_active} requests; retry later")
        # The prompt runs in chunks in the following ``advance`` calls, never here: a
        # start costs its encoding only, and each loop iteration at most one chunk.
        generation = decoder.start(session_key, message.request, message.id, prefill=False)
        stream = Stream(generation, style, identity, message.id, session_key)
        self.running[key] = stream
        self._by_session[session_key] = key
        self._touch(session_key)
        self.requests += 1
        self._flush_safely(stream)

    def cancel(self, identity: bytes, target: str) -> None:
        """End one of this client's streams with ``done`` reason ``cancelled``.

        Raises:
            ProtocolError: ``not_found``.
        """
        stream = self.running.get((identity, target))
        if stream is None:
            raise ProtocolError("not_found", f"no running generate with id {target!r}")
        self._cancel(stream, "cancelled")

    # --- decoding ------------------------------------------------------------------------

    def advance(self) -> None:
        """One token for every running stream: one batched step per model (the styles of
        a style-conditioned model share its decoder and its batch).

        Streams whose prompt is still being prefilled take turns, the earliest request
        first: per model and call, prompt chunks of one step's budget in all (what
        ``[engine] prefill_chunk_ms`` of prefill costs, at most ``prefill_chunk`` tokens;
        the first one always runs; short prompts share a step), the others sitting
        this step out (their cache rows untouched), so a burst of long prompts costs the
        other sessions one chunk per loop iteration, not one per prompt.
        """
        by_decoder: dict[int, list[Stream]] = {}
        for stream in self.running.values():
            by_decoder.setdefault(id(self.decoders[stream.style]), []).append(stream)
        for candidates in by_decoder.values():
            style = candidates[0].style
            # A client that vanished while an earlier style was flushed is already gone.
            live = [s for s in candidates if self._is_running(s) and not s.generation.done]
            batch = [s for s in live if not _prefilling(s)]
            batch += self._prompt_turns([s for s in live if _prefilling(s)])
            if not batch:
                continue
            try:
                self.decoders[style].step([s.generation for s in batch])
            except Exception:  # one broken batch must not take the other styles down
                logger.exception("decoding step failed for style %r; dropping %d requests",
                                 style, len(batch))
                for stream in batch:
                    self._cancel_quietly(stream)
                    self.error(stream.identity, stream.request_id, "internal",
                               "internal engine error while decoding; request dropped")
                continue
            counters = self.counters[style]
            counters.steps += 1
            counters.rows += len(batch)
            counters.max_batch = max(counters.max_batch, len(batch))
            for stream in batch:
                self._flush_safely(stream)

    def _prompt_turns(self, prefilling: list[Stream]) -> list[Stream]:
        """The prefilling streams whose next chunks fit in one step's prompt budget (the
        earliest always), in start order: chunks are sized by the decoder's pace (a time
        budget per step, ``engine.pace``)."""
        if not prefilling:
            return []
        pace = self.decoders[prefilling[0].style].pace
        budget = pace.step_tokens
        if not budget:
            return prefilling
        turns, tokens = [], 0
        for stream in prefilling:
            size = pace.chunk(len(_next_prompt(stream)))
            if turns and tokens + size > budget:
                break
            turns.append(stream)
            tokens += size
        return turns

    def _flush_safely(self, stream: Stream) -> None:
        """Flush one stream; a failure ends that stream with ``internal``, not the loop."""
        try:
            self._flush(stream)
        except Exception:  # e.g. a note that cannot be encoded: drop this stream only
            logger.exception("streaming request %r failed; dropping it", stream.request_id)
            if self._is_running(stream):
                self._cancel_quietly(stream)
                self.error(stream.identity, stream.request_id, "internal",
                           "internal engine error while streaming; request dropped")

    def _flush(self, stream: Stream) -> None:
        """Send the notes completed since the last flush, and ``done`` when it ended."""
        if not self._is_running(stream):
            return
        generation = stream.generation
        notes = generation.drain_notes()
        if notes:
            stream.notes_sent += len(notes)
            self._send(stream.identity, NotesReply(stream.request_id, tuple(notes)))
        if generation.done and self._is_running(stream):
            self._finish(stream, generation.reason)

    def _is_running(self, stream: Stream) -> bool:
        return self.running.get(stream.key) is stream

    # --- ending --------------------------------------------------------------------------

    def _cancel(self, stream: Stream, reason: str) -> None:
        """Stop a stream now; notes not yet sent are dropped (the client asked to stop)."""
        self._cancel_quietly(stream)
        self._finish(stream, reason)

    def _cancel_quietly(self, stream: Stream) -> None:
        """Stop decoding a stream and forget it, without a reply."""
        self._forget(stream)
        try:
            self.decoders[stream.style].cancel(stream.generation)
        except Exception:  # the stream is gone either way; keep serving the others
            logger.exception("cancelling request %r failed", stream.request_id)

    def _finish(self, stream: Stream, reason: str) -> None:
        self._forget(stream)
        generation = stream.generation
        self.tokens += int(generation.tokens)
        self._send(stream.identity, DoneReply(
            stream.request_id, reason, notes=stream.notes_sent,
            tokens=int(generation.tokens), prefill_tokens=int(generation.prefill_tokens),
            reused_tokens=int(generation.reused_tokens),
            elapsed_ms=float(generation.elapsed) * 1000.0))

    def _forget(self, stream: Stream) -> None:
        self.running.pop(stream.key, None)
        if self._by_session.get(stream.session_key) == stream.key:
            del self._by_session[stream.session_key]
        self._touch(stream.session_key)

    def finish_all(self, reason: str) -> None:
        """End every stream (on shutdown) so no client waits for a ``done`` forever."""
        for stream in list(self.running.values()):
            try:
                self._cancel(stream, reason)
            except Exception:  # shutting down: log and end the others
                logger.exception("could not end request %r cleanly", stream.request_id)

    def drop_client(self, identity: bytes) -> None:
        """The client is gone: stop decoding for it (no reply can reach it)."""
        for stream in [s for s in self.running.values() if s.identity == identity]:
            logger.info("client %s unreachable; cancelling request %r", identity.hex(),
                        stream.request_id)
            self._cancel_quietly(stream)

    def error(self, identity: bytes, request_id: str | None, code: str, message: str) -> None:
        """Send an ``error`` reply and count it."""
        self.errors += 1
        logger.debug("error %s to %s: %s", code, identity.hex(), message)
        self._send(identity, ErrorReply(request_id, code, message))

    # --- sessions ------------------------------------------------------------------------

    def _touch(self, key: SessionKey) -> None:
        self.sessions[key] = time.monotonic()
        self.sessions.move_to_end(key)

    def next_expiry(self) -> float | None:
        """When (``time.monotonic``) the least recently used session expires, if any."""
        for last in self.sessions.values():
            return last + self.settings.session_idle_s
        return None

    def expire_sessions(self) -> None:
        """Drop the caches of sessions idle longer than ``session_idle_s``.

        Called every loop iteration, so it looks only at the expired front of the
        least-recently-used order (plus the few sessions still streaming there).
        """
        if not self.sessions:
            return
        deadline = time.monotonic() - self.settings.session_idle_s
        expired = []
        for key, last in self.sessions.items():
            if last > deadline:
                break
            if key not in self._by_session:  # a long stream keeps its session alive
                expired.append(key)
        for key in expired:
            del self.sessions[key]
            for decoder in self.decoders.values():
                decoder.drop_session(key)
            logger.debug("session %r of %s expired", key[1], key[0].hex())

    def stats(self) -> dict[str, Any]:
        """The stream and session counters of the ``stats`` reply."""
        live_tokens = sum(int(s.generation.tokens) for s in self.running.values())
        return {
            "sessions": len(self.sessions),
            "clients": len({key[0] for key in self.sessions}),
            "active": len(self.running),
            "requests": self.requests,
            "errors": self.errors,
            "tokens_generated": self.tokens + live_tokens,
            "styles": {name: {"steps": c.steps, "rows": c.rows, "max_batch": c.max_batch,
                              "active": sum(s.style == name for s in self.running.values())}
                       for name, c in self.counters.items()},
        }
