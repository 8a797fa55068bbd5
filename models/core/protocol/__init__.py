"""The engine protocol, version 1 (docs/protocol.md), shared by the engine and the bridge.

- ``limits``: the version, the limits, the message types, done reasons and error codes;
- ``messages``: one frozen dataclass per request and reply, each with its ``to_json``;
- ``fields``: the check of every field, refusing with the field's name and the value;
- ``parse``: JSON objects into typed requests (as the engine reads them) and replies
  (as a client reads them);
- ``wire``: frames: ``decode_request``, ``decode_reply`` and ``encode``, which refuses a
  request the engine would refuse.

Torch-free and onnxruntime-free, without zmq: the bridge imports it on a laptop, and the
engine server and the bridge client keep only their sockets.
"""

from models.core.exceptions import ProtocolError
from models.core.protocol.limits import (
    DONE_REASONS,
    ERROR_CODES,
    MAX_BARS,
    MAX_CANDIDATES,
    MAX_INT_DIGITS,
    MAX_SEED_SPAN_BEATS,
    MAX_START_DISTANCE_BEATS,
    PROTOCOL_VERSION,
    REPLY_TYPES,
    REQUEST_TYPES,
)
from models.core.protocol.messages import (
    CancelRequest,
    Candidates,
    ChordHint,
    Constraints,
    DoneReply,
    ErrorReply,
    GenerateMessage,
    GenerateRequest,
    HelloReply,
    HelloRequest,
    Limits,
    Morph,
    NotesReply,
    PingRequest,
    PongReply,
    Reply,
    Request,
    SamplingParams,
    StatsReply,
    StatsRequest,
    Steering,
)
from models.core.protocol.parse import parse_generate, parse_reply, parse_request
from models.core.protocol.wire import decode_frame, decode_reply, decode_request, encode

__all__ = [
    "DONE_REASONS",
    "ERROR_CODES",
    "MAX_BARS",
    "MAX_CANDIDATES",
    "MAX_INT_DIGITS",
    "MAX_SEED_SPAN_BEATS",
    "MAX_START_DISTANCE_BEATS",
    "PROTOCOL_VERSION",
    "REPLY_TYPES",
    "REQUEST_TYPES",
    "CancelRequest",
    "Candidates",
    "ChordHint",
    "Constraints",
    "DoneReply",
    "ErrorReply",
    "GenerateMessage",
    "GenerateRequest",
    "HelloReply",
    "HelloRequest",
    "Limits",
    "Morph",
    "NotesReply",
    "PingRequest",
    "PongReply",
    "ProtocolError",
    "Reply",
    "Request",
    "SamplingParams",
    "StatsReply",
    "StatsRequest",
    "Steering",
    "decode_frame",
    "decode_reply",
    "decode_request",
    "encode",
    "parse_generate",
    "parse_reply",
    "parse_request",
]
