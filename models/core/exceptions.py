"""Exceptions of melodyd: one base class, one subclass per part.

Commands catch ``MelodyError`` at the top and print its message on one line; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations


class MelodyError(Exception):
    """Base class of every error a user can meet and act on."""


class ConfigError(MelodyError):
    """A setting is unknown, of the wrong type or out of range."""


class TokenizerError(MelodyError):
    """A tokenizer configuration is invalid or does not match a model."""


class DataError(MelodyError):
    """A dataset is missing, malformed or cannot be built."""


class EmptySourceError(DataError):
    """A source of scores yielded no convertible score at all."""


class ModelError(MelodyError):
    """A checkpoint or model file is missing, corrupt or of an unknown kind."""


class ExportError(MelodyError):
    """Export to ONNX failed or the exported graph does not match PyTorch."""


class EngineError(MelodyError):
    """The engine cannot load a model or serve a request."""


class ProtocolError(EngineError):
    """A protocol message is malformed; carries the error code sent back to the client.

    Attributes:
        code: the ``error`` reply's code (``invalid``, ``bad_json``, ...).
        request_id: the refused message's ``id`` when it had a readable one (the reply
            echoes it); set by ``models.core.protocol.wire.decode_request``.
    """

    def __init__(self, code: str, message: str, request_id: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.request_id = request_id


class BridgeError(MelodyError):
    """The MIDI side cannot open ports, follow the clock or reach the engine."""


class ToolError(MelodyError):
    """An offline tool (render, plot, evaluation) lacks a program, soundfont or library."""
