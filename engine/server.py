"""The engine's zmq ROUTER service: requests in, streamed notes out, one thread.

One thread owns the socket (zmq sockets are not thread-safe) and runs a loop:

1. poll: block while nothing is being generated (no spinning: the engine shares the
   machine with a DAW), return at once while generations are running;
2. read every waiting request and answer it, or start its generation;
3. advance every running generation by one token: one batched ``StyleDecoder.step``
   per style, so N sessions of one style cost one ONNX call;
4. send each completed note at once (``notes``), and ``done`` at the end.

A bad message gets an ``error`` reply and never stops the loop; an exception while
handling one request becomes an ``internal`` error for that request only.
"""

from __future__ import annotations

import errno
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import zmq
from zmq.auth.thread import ThreadAuthenticator

from engine import protocol
from engine.keys import CurveKeys
from models.exceptions import EngineError, MelodyError, ProtocolError
from models.settings import EngineSettings

logger = logging.getLogger(__name__)

# Requests read per loop iteration at most, so a flood cannot stall running streams.
_MAX_READS_PER_ITERATION = 256
# Frames far beyond the protocol limit are cut by zmq itself (the peer is disconnected)
# before they fill memory; frames up to this size get a polite ``too_large`` reply.
_HARD_SIZE_FACTOR = 16
# Time a graceful stop waits for the last replies (``done`` of cut streams) to leave.
_CLOSE_LINGER_MS = 200

SessionKey = tuple[bytes, str]


def engine_version() -> str:
    """The installed melodyd version, for ``hello``."""
    try:
        return version("melodyd")
    except PackageNotFoundError:
        return "unknown"


@dataclass
class _Running:
    """One ``generate`` being served.

    Attributes:
        generation: the decoder's handle.
        style: which decoder advances it.
        identity: the ROUTER identity of the client that asked.
        request_id: the client's ``id``, echoed on every reply.
        session_key: (identity, session): the cache it uses.
        notes_sent: notes streamed so far (reported in ``done``).
    """

    generation: Any
    style: str
    identity: bytes
    request_id: str
    session_key: SessionKey
    notes_sent: int = 0


@dataclass
class _StyleCounters:
    steps: int = 0      # batched decoder.step calls
    rows: int = 0       # generations advanced by them (rows / steps = mean batch)
    max_batch: int = 0


@dataclass
class _Counters:
    requests: int = 0
    errors: int = 0
    tokens: int = 0
    styles: dict[str, _StyleCounters] = field(default_factory=dict)


class EngineServer:
    """Serve loaded style decoders over a zmq ROUTER socket.

    Call ``serve()`` in the thread that should own the socket; ``stop()`` may be called
    from any thread or a signal handler.
    """

    def __init__(self, decoders: Mapping[str, Any], settings: EngineSettings | None = None,
                 *, bind: str | None = None, curve: CurveKeys | None = None) -> None:
        """Prepare a server; nothing is bound until ``serve()``.

        Args:
            decoders: style name -> ``engine.decoder.StyleDecoder``.
            settings: the ``[engine]`` section (limits, idle expiry, default address).
            bind: the zmq endpoint; ``tcp://127.0.0.1:*`` picks a free port.
            curve: serve with CURVE using these keys (``engine.keys.choose_security``
                decides whether keys are required).
        """
        if not decoders:
            raise EngineError("the engine needs at least one style to serve")
        self.decoders = dict(decoders)
        self.settings = settings or EngineSettings()
        self.bind = bind or self.settings.bind
        self.curve = curve
        # Set once the socket is bound (or binding failed: see ``startup_error``).
        self.ready = threading.Event()
        self.startup_error: BaseException | None = None
        self.endpoint: str | None = None
        self._stopping = threading.Event()
        self._wake_endpoint = f"inproc://melodyd-engine-wake-{id(self):x}"
        self._context: zmq.Context | None = None
        self._socket: zmq.Socket | None = None
        self._wake: zmq.Socket | None = None
        self._auth: Any = None
        self._running: dict[tuple[bytes, str], _Running] = {}
        self._by_session: dict[SessionKey, tuple[bytes, str]] = {}
        # Sessions the decoders may hold a cache for, with the time they were last used.
        self._sessions: dict[SessionKey, float] = {}
        self._counters = _Counters(styles={s: _StyleCounters() for s in self.decoders})
        self._started = time.monotonic()
        self._styles_facts = {name: _facts(d) for name, d in self.decoders.items()}

    # --- lifecycle -----------------------------------------------------------------------

    def serve(self) -> None:
        """Bind, then run the loop until ``stop()``; always closes what it opened.

        Raises:
            EngineError: the address cannot be bound or the CURVE keys are unusable.
        """
        try:
            self._open()
        except BaseException as err:
            self.startup_error = err
            self.ready.set()
            self._close()
            raise
        self.ready.set()
        logger.info("engine serving %s on %s%s", ", ".join(self.decoders), self.endpoint,
                    " with CURVE" if self.curve else "")
        try:
            while not self._stopping.is_set():
                self._iterate()
        finally:
            self._finish_all("cancelled")
            self._close()
            logger.info("engine stopped")

    def stop(self) -> None:
        """Ask the loop to end; safe from any thread and from a signal handler."""
        self._stopping.set()
        context = self._context
        if context is None or context.closed:
            return
        try:
            # A throwaway socket per call: the loop's own sockets belong to its thread.
            with context.socket(zmq.PUSH) as waker:
                waker.linger = 0
                waker.connect(self._wake_endpoint)
                waker.send(b"", zmq.NOBLOCK)
        except zmq.ZMQError:
            pass  # the loop is already closing; the flag alone stops it

    def _open(self) -> None:
        context = zmq.Context()
        self._context = context
        if self.curve is not None:
            public, secret = self.curve.load()
            self._auth = ThreadAuthenticator(context, log=logging.getLogger(__name__ + ".auth"))
            self._auth.start()
            # Only clients whose public key is in the directory get through the handshake.
            self._auth.configure_curve(domain="*", location=str(self.curve.clients_dir))
        sock = context.socket(zmq.ROUTER)
        sock.linger = 0
        # Sending to a vanished client raises instead of silently dropping, so its
        # generations are cancelled instead of decoding for nobody.
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        sock.setsockopt(zmq.MAXMSGSIZE,
                        self.settings.max_message_bytes * _HARD_SIZE_FACTOR)
        if self.curve is not None:
            sock.curve_secretkey = secret
            sock.curve_publickey = public
            sock.curve_server = True
        self._socket = sock
        try:
            sock.bind(self.bind)
        except zmq.ZMQError as err:
            raise EngineError(f"cannot bind {self.bind}: {err}") from err
        self.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        wake = context.socket(zmq.PULL)
        wake.linger = 0
        wake.bind(self._wake_endpoint)
        self._wake = wake
        self._poller = zmq.Poller()
        self._poller.register(sock, zmq.POLLIN)
        self._poller.register(wake, zmq.POLLIN)

    def _close(self) -> None:
        if self._socket is not None:
            self._socket.close(linger=_CLOSE_LINGER_MS)
            self._socket = None
        if self._wake is not None:
            self._wake.close(linger=0)
            self._wake = None
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        if self._context is not None:
            self._context.term()

    # --- the loop ------------------------------------------------------------------------

    def _poll_timeout_ms(self) -> int | None:
        """0 while generating; else sleep until the next session expiry (or forever)."""
        if self._running:
            return 0
        if not self._sessions:
            return None
        due = min(self._sessions.values()) + self.settings.session_idle_s
        return max(1, int((due - time.monotonic()) * 1000) + 1)

    def _iterate(self) -> None:
        events = dict(self._poller.poll(self._poll_timeout_ms()))
        if self._wake in events:
            while True:
                try:
                    self._wake.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
        if self._stopping.is_set():
            return
        if self._socket in events:
            self._read_requests()
        if self._running:
            self._advance()
        self._expire_sessions()

    def _read_requests(self) -> None:
        for _ in range(_MAX_READS_PER_ITERATION):
            try:
                frames = self._socket.recv_multipart(zmq.NOBLOCK, copy=True)
            except zmq.Again:
                return
            identity, payload = frames[0], frames[1:]
            if len(payload) != 1:
                self._reply_error(identity, None, "bad_json",
                                  f"a request is exactly one frame (received {len(payload)})")
                continue
            self._handle(identity, payload[0])

    def _handle(self, identity: bytes, frame: bytes) -> None:
        """Answer one request frame; nothing raised here may end the loop."""
        request_id = None
        try:
            obj = protocol.decode_frame(frame, self.settings.max_message_bytes)
            request_id = protocol.request_id_of(obj)
            request = protocol.parse_request(obj, self.settings.max_seed_notes)
            self._dispatch(identity, request)
        except ProtocolError as err:
            self._reply_error(identity, request_id, err.code, str(err))
        except MelodyError as err:
            # The decoder refused what was asked (e.g. a time signature outside the
            # model's vocabulary): the client's request, not the engine, is at fault.
            self._reply_error(identity, request_id, "unsupported", str(err))
        except Exception:  # a bug must cost one request, never the service
            logger.exception("internal error handling a request from %s", identity.hex())
            self._reply_error(identity, request_id, "internal",
                              "internal engine error; the request was dropped")

    def _reply_error(self, identity: bytes, request_id: str | None, code: str,
                     message: str) -> None:
        self._counters.errors += 1
        logger.debug("error %s to %s: %s", code, identity.hex(), message)
        self._send(identity, protocol.error_reply(request_id, code, message))

    def _dispatch(self, identity: bytes, request: protocol.Request) -> None:
        if isinstance(request, protocol.PingRequest):
            self._send(identity, protocol.pong_reply(request.id, request.t))
        elif isinstance(request, protocol.HelloRequest):
            self._send(identity, protocol.hello_reply(
                request.id, engine_version(), self._styles_facts, self._limits()))
        elif isinstance(request, protocol.StatsRequest):
            self._send(identity, protocol.stats_reply(request.id, self.stats()))
        elif isinstance(request, protocol.CancelRequest):
            running = self._running.get((identity, request.target))
            if running is None:
                raise ProtocolError("not_found",
                                    f"no running generate with id {request.target!r}")
            self._cancel(running, "cancelled")
        else:
            self._start(identity, request)

    def _limits(self) -> dict[str, Any]:
        return {"max_message_bytes": self.settings.max_message_bytes,
                "max_seed_notes": self.settings.max_seed_notes,
                "max_active": self.settings.max_active,
                "max_bars": protocol.MAX_BARS,
                "session_idle_s": self.settings.session_idle_s}

    # --- generations ---------------------------------------------------------------------

    def _start(self, identity: bytes, message: protocol.GenerateMessage) -> None:
        style = message.request.style
        decoder = self.decoders.get(style)
        if decoder is None:
            raise ProtocolError("unknown_style", f"style {style!r} is not loaded "
                                f"(loaded: {', '.join(self.decoders)})")
        key = (identity, message.id)
        if key in self._running:
            raise ProtocolError("duplicate_id",
                                f"a generate with id {message.id!r} is already running")
        session_key = (identity, message.session)
        previous = self._by_session.get(session_key)
        # A newer request for the same jam replaces the running one: its answer is stale,
        # and one session's cache can only feed one generation at a time.
        if previous is not None:
            self._cancel(self._running[previous], "superseded")
        if len(self._running) >= self.settings.max_active:
            raise ProtocolError("busy", f"the engine is running its maximum of "
                                f"{self.settings.max_active} requests; retry later")
        generation = decoder.start(session_key, message.request, message.id)
        running = _Running(generation, style, identity, message.id, session_key)
        self._running[key] = running
        self._by_session[session_key] = key
        self._sessions[session_key] = time.monotonic()
        self._counters.requests += 1
        self._flush(running)

    def _advance(self) -> None:
        """One token for every running generation: one batched step per style."""
        by_style: dict[str, list[_Running]] = {}
        for running in list(self._running.values()):
            by_style.setdefault(running.style, []).append(running)
        for style, candidates in by_style.items():
            # A client that vanished while an earlier style was flushed is already gone.
            batch = [r for r in candidates if self._is_running(r) and not r.generation.done]
            if not batch:
                continue
            decoder = self.decoders[style]
            try:
                decoder.step([r.generation for r in batch])
            except Exception:  # one broken batch must not take the other styles down
                logger.exception("decoding step failed for style %r; dropping %d requests",
                                 style, len(batch))
                for running in batch:
                    self._drop(running)
                    self._reply_error(running.identity, running.request_id, "internal",
                                      "internal engine error while decoding; request dropped")
                continue
            counters = self._counters.styles[style]
            counters.steps += 1
            counters.rows += len(batch)
            counters.max_batch = max(counters.max_batch, len(batch))
            for running in batch:
                self._flush(running)

    def _flush(self, running: _Running) -> None:
        """Send the notes completed since the last flush, and ``done`` when it ended."""
        if not self._is_running(running):
            return
        generation = running.generation
        notes = generation.drain_notes()
        if notes:
            running.notes_sent += len(notes)
            self._send(running.identity, protocol.notes_reply(running.request_id, notes))
        if generation.done and self._is_running(running):
            self._finish(running, generation.reason)

    def _is_running(self, running: _Running) -> bool:
        return self._running.get((running.identity, running.request_id)) is running

    def _cancel(self, running: _Running, reason: str) -> None:
        """Stop a generation now; notes not yet sent are dropped (the client asked to stop)."""
        try:
            self.decoders[running.style].cancel(running.generation)
        except Exception:
            logger.exception("cancelling request %r failed", running.request_id)
        self._finish(running, reason)

    def _finish(self, running: _Running, reason: str) -> None:
        self._drop(running)
        generation = running.generation
        self._counters.tokens += int(generation.tokens)
        self._send(running.identity, protocol.done_reply(
            running.request_id, reason, notes=running.notes_sent,
            tokens=int(generation.tokens), prefill_tokens=int(generation.prefill_tokens),
            reused_tokens=int(generation.reused_tokens),
            elapsed_ms=float(generation.elapsed) * 1000.0))

    def _drop(self, running: _Running) -> None:
        self._running.pop((running.identity, running.request_id), None)
        if self._by_session.get(running.session_key) == (running.identity, running.request_id):
            del self._by_session[running.session_key]
        self._sessions[running.session_key] = time.monotonic()

    def _finish_all(self, reason: str) -> None:
        """End every stream (on shutdown) so no client waits for a ``done`` forever."""
        for running in list(self._running.values()):
            try:
                self._cancel(running, reason)
            except Exception:
                logger.exception("could not end request %r cleanly", running.request_id)

    def _drop_client(self, identity: bytes) -> None:
        """The client is gone: stop decoding for it (no reply can reach it)."""
        for running in [r for r in self._running.values() if r.identity == identity]:
            logger.info("client %s disconnected; cancelling request %r", identity.hex(),
                        running.request_id)
            try:
                self.decoders[running.style].cancel(running.generation)
            except Exception:
                logger.exception("cancelling request %r failed", running.request_id)
            self._drop(running)

    def _expire_sessions(self) -> None:
        if not self._sessions:
            return
        now = time.monotonic()
        limit = self.settings.session_idle_s
        for key, last in list(self._sessions.items()):
            if now - last < limit or key in self._by_session:
                continue
            del self._sessions[key]
            for decoder in self.decoders.values():
                drop = getattr(decoder, "drop_session", None)
                if drop is not None:
                    drop(key)
            logger.debug("session %r of %s expired", key[1], key[0].hex())

    # --- output --------------------------------------------------------------------------

    def _send(self, identity: bytes, message: Mapping[str, Any]) -> None:
        try:
            self._socket.send_multipart([identity, protocol.encode_reply(message)],
                                        zmq.NOBLOCK)
        except zmq.ZMQError as err:
            if err.errno not in (errno.EHOSTUNREACH, zmq.EAGAIN):
                raise
            # Unreachable (gone) or not reading (its queue is full): either way nobody
            # will read this stream, so stop generating it.
            logger.warning("client %s cannot take replies (%s)", identity.hex(), err)
            self._drop_client(identity)

    def stats(self) -> dict[str, Any]:
        """The counters the ``stats`` reply carries."""
        live_tokens = sum(int(r.generation.tokens) for r in self._running.values())
        return {
            "sessions": len(self._sessions),
            "clients": len({key[0] for key in self._sessions}),
            "active": len(self._running),
            "requests": self._counters.requests,
            "errors": self._counters.errors,
            "tokens_generated": self._counters.tokens + live_tokens,
            "uptime_s": round(time.monotonic() - self._started, 3),
            "styles": {name: {"steps": c.steps, "rows": c.rows, "max_batch": c.max_batch,
                              "active": sum(r.style == name for r in self._running.values())}
                       for name, c in self._counters.styles.items()},
        }


def _facts(decoder: Any) -> dict[str, Any]:
    """What ``hello`` tells about one style's model."""
    model = getattr(decoder, "model", None)
    facts = getattr(model, "facts", None)
    return dict(facts()) if facts is not None else {}
