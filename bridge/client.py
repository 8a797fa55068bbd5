"""The zmq client of the engine (docs/protocol.md): a DEALER owned by one thread.

Messages are the typed ones of ``models.core.protocol``, shared with the engine: what the
client sends is encoded and checked by the engine's own rules (with the limits its
``hello`` reported), and what it receives is parsed into typed replies. The daemon's
thread polls ``socket`` together with its own wake-up pipe, then calls ``receive`` and
``service``. Heartbeats: a ping every second; three seconds without any
reply means the engine is lost, and the client reports it, throws the socket away (so no
stale request is delivered to a restarted engine) and keeps pinging on a fresh one until
the engine answers again.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth

from models.core import protocol
from models.core.exceptions import BridgeError, ProtocolError

logger = logging.getLogger(__name__)

PING_INTERVAL_S = 1.0  # the protocol's heartbeat period
LOSS_TIMEOUT_S = 3.0  # the protocol's "engine lost" silence


@dataclass(frozen=True)
class CurveClientKeys:
    """CURVE keys of a bridge talking to an engine that is not on this machine.

    Attributes:
        server_public: the engine's public key.
        client_public: this bridge's public key (authorized on the engine).
        client_secret: this bridge's secret key.
    """

    server_public: bytes
    client_public: bytes
    client_secret: bytes

    @classmethod
    def from_dir(cls, directory: str | Path) -> CurveClientKeys:
        """Read ``server.key`` and ``client.key_secret`` as written by
        ``melodyd engine --make-keys DIR``.

        Raises:
            BridgeError: a key file is missing or not a zmq certificate.
        """
        directory = Path(directory).expanduser()
        try:
            server_public, _ = zmq.auth.load_certificate(directory / "server.key")
            client_public, client_secret = zmq.auth.load_certificate(
                directory / "client.key_secret")
        except (OSError, ValueError) as err:
            raise BridgeError(f"cannot read the engine keys in {directory}: {err} (make them "
                              "with `melodyd engine --make-keys DIR`)") from err
        if client_secret is None:
            raise BridgeError(f"{directory / 'client.key_secret'} holds no secret key")
        return cls(server_public, client_public, client_secret)


class EngineClient:
    """Typed requests to one engine, typed replies, and the engine's up/lost state.

    Attributes:
        address: the engine's zmq address, e.g. ``tcp://127.0.0.1:5757``.
        state: ``"connecting"`` (never answered), ``"up"`` or ``"lost"``; each call
            changes it at most once, so its owner sees every change by looking after
            each ``receive``, ``service`` and ``lose``.
        limits: the engine's limits from its last ``hello`` (the protocol's defaults
            before one); requests are checked against them before they are sent.

    Args:
        curve: keys for an engine served with CURVE (any non-loopback address).
    """

    def __init__(self, address: str, context: zmq.Context | None = None, *,
                 ping_interval: float = PING_INTERVAL_S, loss_timeout: float = LOSS_TIMEOUT_S,
                 now: Callable[[], float] = time.monotonic,
                 curve: CurveClientKeys | None = None) -> None:
        self.address = address
        self.state = "connecting"
        self.limits = protocol.Limits()
        self._context = context or zmq.Context.instance()
        self._ping_interval = ping_interval
        self._loss_timeout = loss_timeout
        self._now = now
        self._ids = itertools.count(1)
        self._socket: zmq.Socket | None = None
        self._last_reply = 0.0
        self._next_ping = 0.0
        self._opened_at = 0.0
        self._curve = curve

    @property
    def socket(self) -> zmq.Socket:
        """The DEALER socket (poll it for replies); replaced after a loss.

        Raises:
            BridgeError: the client is not open.
        """
        if self._socket is None:
            raise BridgeError("engine client is not open")
        return self._socket

    def open(self) -> None:
        """Create the DEALER and connect (zmq connects in the background).

        Raises:
            BridgeError: the address is malformed.
        """
        sock = self._context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        # Never queue requests for an engine that is away: a restarted engine must not
        # receive stale generates.
        sock.setsockopt(zmq.IMMEDIATE, 1)
        if self._curve is not None:
            sock.curve_serverkey = self._curve.server_public
            sock.curve_publickey = self._curve.client_public
            sock.curve_secretkey = self._curve.client_secret
        try:
            sock.connect(self.address)
        except zmq.ZMQError as err:
            sock.close()
            raise BridgeError(f"cannot connect to the engine at {self.address!r}: {err}") from err
        self._socket = sock
        self._opened_at = self._now()
        self._next_ping = self._opened_at

    def close(self) -> None:
        """Close the socket (pending requests are discarded)."""
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None

    def next_id(self, kind: str) -> str:
        """A fresh request id: the type's initial and a counter (``g12``, ``p13``)."""
        return f"{kind[0]}{next(self._ids)}"

    def send(self, message: protocol.Request) -> None:
        """Send one request; dropped silently while the engine is away.

        Raises:
            ProtocolError: the engine would refuse it (the code and message its ``error``
                reply would carry); nothing is sent.
        """
        frame = protocol.encode(message, self.limits)
        try:
            self.socket.send(frame, zmq.NOBLOCK)
        except zmq.Again:
            logger.debug("engine not connected; %s %s not sent", message.TYPE, message.id)

    def hello(self) -> str:
        """Ask for the engine's styles and limits; returns the request's id."""
        request_id = self.next_id("hello")
        self.send(protocol.HelloRequest(id=request_id))
        return request_id

    def generate(self, session: str, request: protocol.GenerateRequest) -> str:
        """Ask for a response in ``session``; returns the id its replies carry.

        Raises:
            ProtocolError: the engine would refuse the request; nothing is sent.
        """
        message = protocol.GenerateMessage(self.next_id("generate"), session, request)
        self.send(message)
        return message.id

    def cancel(self, target: str) -> None:
        """Ask the engine to stop the generate ``target``."""
        self.send(protocol.CancelRequest(target=target, id=self.next_id("cancel")))

    def receive(self) -> list[protocol.Reply]:
        """Every reply waiting on the socket (without blocking), parsed; a reply that is
        not of this protocol is logged and skipped."""
        replies: list[protocol.Reply] = []
        while True:
            try:
                frame = self.socket.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            try:
                reply = protocol.decode_reply(frame)
            except ProtocolError as err:
                logger.warning("ignoring a malformed engine reply (%s): %s", err.code, err)
                continue
            if isinstance(reply, protocol.HelloReply):
                self.limits = reply.limits
            replies.append(reply)
        if replies:
            self._last_reply = self._now()
            if self.state != "up":
                self.state = "up"
                logger.info("engine at %s is up", self.address)
        return replies

    def lose(self, reason: str) -> None:
        """Declare the engine lost now: report it, throw the socket away (nothing stale
        reaches its successor) and reconnect; ``state`` is ``"up"`` again once it answers.

        Called on silence by ``service``, and by whoever knows sooner (the engine child
        that died and was restarted faster than the silence timeout).
        """
        if self.state == "lost":
            return
        self.state = "lost"
        logger.warning("engine at %s lost (%s); reconnecting", self.address, reason)
        self.close()
        self.open()

    def service(self) -> float:
        """Send a due ping, detect a lost engine; returns seconds until the next call."""
        now = self._now()
        since = now - max(self._last_reply, self._opened_at)
        if self.state == "up" and since > self._loss_timeout:
            self.lose(f"no reply for {since:.1f} s")
            now = self._now()
        if now >= self._next_ping:
            self.send(protocol.PingRequest(id=self.next_id("ping"), t=now))
            self._next_ping = now + self._ping_interval
        return max(0.0, self._next_ping - now)
