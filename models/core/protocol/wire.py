"""Frames: one UTF-8 JSON object each, to and from typed messages.

- ``decode_request`` (the engine): size check, JSON, then ``parse.parse_request``;
- ``decode_reply`` (a client): the same for a reply, with ``parse.parse_reply``;
- ``encode`` (both): a message's ``to_json`` as a compact frame. A request is first run
  through the engine's own ``parse_request`` (with the limits the engine reported), so a
  client cannot send what the engine would refuse: it gets the same ``ProtocolError``
  before anything leaves.

Pure functions, no zmq: the engine server and the bridge client own the sockets.
"""

from __future__ import annotations

import json
from typing import Any

from models.core.exceptions import ProtocolError
from models.core.protocol.fields import HugeInteger, message_id
from models.core.protocol.limits import (
    MAX_INT_DIGITS,
    MAX_MESSAGE_BYTES,
    MAX_REPLY_BYTES,
    MAX_SEED_NOTES,
)
from models.core.protocol.messages import REQUEST_CLASSES, Limits, Message, Reply, Request
from models.core.protocol.parse import parse_reply, parse_request


def _parse_int(text: str) -> int | HugeInteger:
    # Called by json for every integer literal; Python's own int() would raise ValueError
    # past its digit limit (and takes quadratic time below it).
    if len(text) > MAX_INT_DIGITS:
        return HugeInteger(text)
    return int(text)


def _reject_constant(name: str) -> float:
    # json.loads accepts NaN and Infinity by default; they are not JSON and not beats.
    raise ProtocolError("bad_json", f"{name} is not valid JSON")


def decode_frame(frame: bytes, max_bytes: int = MAX_MESSAGE_BYTES) -> dict[str, Any]:
    """Check the size, then parse one frame as a UTF-8 JSON object.

    Raises:
        ProtocolError: ``too_large`` (checked before any parsing) or ``bad_json``.
    """
    if len(frame) > max_bytes:
        raise ProtocolError("too_large",
                            f"message is {len(frame)} bytes, the limit is {max_bytes}")
    try:
        text = frame.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ProtocolError("bad_json", f"message is not UTF-8: {err.reason}") from err
    try:
        obj = json.loads(text, parse_constant=_reject_constant, parse_int=_parse_int)
    except json.JSONDecodeError as err:
        raise ProtocolError("bad_json", f"message is not JSON: {err.msg} at char {err.pos}") \
            from err
    except RecursionError as err:  # absurdly nested arrays, still under the size limit
        raise ProtocolError("bad_json", "message is nested too deeply") from err
    if not isinstance(obj, dict):
        raise ProtocolError("bad_json",
                            f"message must be a JSON object (received {type(obj).__name__})")
    return obj


def decode_request(frame: bytes, *, max_bytes: int = MAX_MESSAGE_BYTES,
                   max_seed_notes: int = MAX_SEED_NOTES) -> Request:
    """Size-check, parse and validate one request frame.

    Raises:
        ProtocolError: with the code the ``error`` reply carries, and ``request_id`` set
            when the frame held a readable ``id`` (the reply echoes it).
    """
    obj = decode_frame(frame, max_bytes)
    try:
        return parse_request(obj, max_seed_notes)
    except ProtocolError as err:
        err.request_id = message_id(obj)
        raise


def decode_reply(frame: bytes, *, max_bytes: int = MAX_REPLY_BYTES) -> Reply:
    """Size-check, parse and validate one reply frame.

    Raises:
        ProtocolError: the frame is no reply of this protocol version.
    """
    return parse_reply(decode_frame(frame, max_bytes))


def encode(message: Message, limits: Limits | None = None) -> bytes:
    """One message as a compact UTF-8 JSON frame.

    Args:
        message: a request or a reply.
        limits: for a request, the limits of the engine it goes to (its ``hello``); the
            protocol's defaults when ``None``.

    Raises:
        ProtocolError: a request the engine would refuse (its code and message, as the
            engine's ``error`` reply would carry them).
        ValueError: a reply holding a value JSON cannot carry (NaN): a bug of the sender.
    """
    obj = message.to_json()
    request = isinstance(message, REQUEST_CLASSES)
    if request:
        limits = limits or Limits()
        parse_request(obj, limits.max_seed_notes)
    frame = json.dumps(obj, separators=(",", ":"), allow_nan=False).encode("utf-8")
    if request and len(frame) > limits.max_message_bytes:
        raise ProtocolError("too_large", f"message is {len(frame)} bytes, the limit is "
                            f"{limits.max_message_bytes}")
    return frame
