"""The engine's zmq ROUTER service: requests in, streamed notes out, one thread.

One thread owns the socket (zmq sockets are not thread-safe) and runs a loop:

1. poll: block while nothing is being generated (no spinning: the engine shares the
   machine with a DAW), return at once while generations are running;
2. read every waiting request and answer it, or start its generation;
3. advance every running generation by one token: one batched ``StyleDecoder.step``
   per style, so N sessions of one style cost one ONNX call;
4. send each completed note at once (``notes``), and ``done`` at the end.

Messages are typed and validated by ``models.core.protocol`` (shared with the bridge):
this module owns the socket and dispatches. A bad message gets an ``error`` reply and
never stops the loop; an exception while handling one request becomes an ``internal``
error for that request only.
"""

from __future__ import annotations

import errno
import logging
import threading
import time
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import zmq
from zmq.auth.thread import ThreadAuthenticator

from engine.keys import CurveKeys
from engine.streams import Streams, decoder_facts
from models.core import protocol
from models.core.exceptions import EngineError, MelodyError, ProtocolError
from models.core.settings import EngineSettings

logger = logging.getLogger(__name__)

# Requests read per loop iteration at most, so a flood cannot stall running streams.
_MAX_READS_PER_ITERATION = 256
# Generates started per iteration at most while others are running (see _read_requests).
_MAX_STARTS_PER_ITERATION = 4
# After this much work on requests (parsing, encoding prompts) in one iteration, the rest
# wait for the next one: four maximal seeds in a row held a ping 150 ms in the soak.
_START_BUDGET_S = 0.03
# Frames far beyond the protocol limit are cut by zmq itself (the peer is disconnected)
# before they fill memory; frames up to this size get a polite ``too_large`` reply.
_HARD_SIZE_FACTOR = 16
# Time a graceful stop waits for the last replies (``done`` of cut streams) to leave.
_CLOSE_LINGER_MS = 200
# Pause after an unexpected loop error, so a persistent one cannot spin a core.
_ERROR_PAUSE_S = 0.1


def engine_version() -> str:
    """The installed melodyd version, for ``hello``."""
    try:
        return version("melodyd")
    except PackageNotFoundError:
        return "unknown"


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
        self.streams = Streams(self.decoders, self.settings, self._send)
        self._started = time.monotonic()
        self._styles_facts = {name: decoder_facts(d) for name, d in self.decoders.items()}

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
                try:
                    self._iterate()
                except Exception:  # the service's top level: log, pause, keep serving
                    logger.exception("engine loop error; continuing")
                    self._stopping.wait(_ERROR_PAUSE_S)
        finally:
            self.streams.finish_all("cancelled")
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
            self._context = None

    # --- the loop ------------------------------------------------------------------------

    def _poll_timeout_ms(self) -> int | None:
        """0 while generating; else sleep until the next session expiry (or forever)."""
        if self.streams.running:
            return 0
        due = self.streams.next_expiry()
        if due is None:
            return None
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
        if self.streams.running:
            self.streams.advance()
        self.streams.expire_sessions()

    def _read_requests(self) -> None:
        starts = 0
        began = time.perf_counter()
        for read in range(_MAX_READS_PER_ITERATION):
            # Each start encodes a prompt; while streams are running, a burst of requests
            # is started a few per iteration so the running ones keep their pace, and no
            # request is read once a time budget is spent (a flood of large invalid
            # messages costs their parsing too), so a ping behind them waits one
            # iteration. The rest stay queued in the socket, in order.
            if starts >= _MAX_STARTS_PER_ITERATION and self.streams.running:
                return
            if read and time.perf_counter() - began > _START_BUDGET_S:
                return
            try:
                frames = self._socket.recv_multipart(zmq.NOBLOCK, copy=True)
            except zmq.Again:
                return
            identity, payload = frames[0], frames[1:]
            if len(payload) != 1:
                self.streams.error(identity, None, "bad_json",
                                   f"a request is exactly one frame (received {len(payload)})")
                continue
            starts += self._handle(identity, payload[0])

    def _handle(self, identity: bytes, frame: bytes) -> bool:
        """Answer one request frame; nothing raised here may end the loop.

        Returns:
            whether it was a valid ``generate`` (started or refused by the decoder).
        """
        request: protocol.Request | None = None
        try:
            request = protocol.decode_request(frame,
                                              max_bytes=self.settings.max_message_bytes,
                                              max_seed_notes=self.settings.max_seed_notes)
            self._dispatch(identity, request)
        except ProtocolError as err:
            # Refused while decoding: the id the frame held, if readable; else the request's.
            reply_id = err.request_id if request is None else request.id
            self.streams.error(identity, reply_id, err.code, str(err))
        except MelodyError as err:
            # The decoder refused what was asked (e.g. a time signature outside the
            # model's vocabulary): the client's request, not the engine, is at fault.
            self.streams.error(identity, _id_of(request), "unsupported", str(err))
        except Exception:  # a bug must cost one request, never the service
            logger.exception("internal error handling a request from %s", identity.hex())
            self.streams.error(identity, _id_of(request), "internal",
                               "internal engine error; the request was dropped")
        return isinstance(request, protocol.GenerateMessage)

    def _dispatch(self, identity: bytes, request: protocol.Request) -> None:
        if isinstance(request, protocol.PingRequest):
            self._send(identity, protocol.PongReply(request.id, request.t))
        elif isinstance(request, protocol.HelloRequest):
            self._send(identity, protocol.HelloReply(
                request.id, engine_version(), self._styles_facts, self._limits()))
        elif isinstance(request, protocol.StatsRequest):
            self._send(identity, protocol.StatsReply(request.id, **self.stats()))
        elif isinstance(request, protocol.CancelRequest):
            self.streams.cancel(identity, request.target)
        else:
            self.streams.start(identity, request)

    def _limits(self) -> protocol.Limits:
        return protocol.Limits(max_message_bytes=self.settings.max_message_bytes,
                               max_seed_notes=self.settings.max_seed_notes,
                               max_active=self.settings.max_active,
                               session_idle_s=self.settings.session_idle_s)

    # --- output --------------------------------------------------------------------------

    def _send(self, identity: bytes, message: protocol.Reply) -> None:
        try:
            self._socket.send_multipart([identity, protocol.encode(message)], zmq.NOBLOCK)
        except zmq.ZMQError as err:
            # EHOSTUNREACH: the client is gone; EAGAIN: it stopped reading and its queue
            # is full. Either way nobody reads this stream, so stop generating it.
            level = logging.INFO if err.errno == errno.EHOSTUNREACH else logging.WARNING
            logger.log(level, "client %s cannot take replies (%s)", identity.hex(), err)
            self.streams.drop_client(identity)

    def stats(self) -> dict[str, Any]:
        """The counters the ``stats`` reply carries."""
        stats = self.streams.stats()
        stats["uptime_s"] = round(time.monotonic() - self._started, 3)
        return stats


def _id_of(request: protocol.Request | None) -> str | None:
    return None if request is None else request.id
