"""The fuzz part's messages: valid protocol messages of every type and mutations of them
(wrong types, huge numbers, NaN, deep nesting, huge strings, far start_beat, long seeds,
wrong versions, ...) and garbage frames, all drawn from one seeded generator so that a
seed replays the same traffic."""

from __future__ import annotations

import copy
import json
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# Values of the wrong type for any field.
# Each use takes a copy: a list or dict put into one message and mutated later must not
# turn up, changed or containing itself, in every later message.
WRONG = [None, True, False, "x", "", [], {}, [1, 2], {"a": 1}, 0, -1, 1.5, "60", "1e400"]
# Number tokens written into the JSON text as they are (json.dumps cannot write them).
HUGE = ["1e308", "1e309", "-1e309", "1" + "0" * 400, "9" * 5000, "-" + "9" * 4300,
        "2e-324", "18446744073709551616", "9223372036854775808", "-0.0", "1E+400",
        "0." + "0" * 400 + "1", "1" + "0" * 309, "123456789012345678901234567890"]
NONFINITE = ["NaN", "Infinity", "-Infinity"]
RAW = "\x00raw{}\x00"
# The engine lets zmq cut frames over this many times max_message_bytes (the peer is
# disconnected); engine.server's _HARD_SIZE_FACTOR.
ZMQ_LIMIT_FACTOR = 16


def _paths(value: Any, prefix: tuple = ()) -> list[tuple[Any, Any, tuple]]:
    """(container, key, path) of every field and list item, nested ones included."""
    found = []
    items = value.items() if isinstance(value, dict) else (
        enumerate(value) if isinstance(value, list) else [])
    for key, item in items:
        found.append((value, key, (*prefix, key)))
        found += _paths(item, (*prefix, key))
    return found


def _dicts(value: Any) -> list[dict]:
    """Every object in ``value``, itself and nested ones."""
    found = [value] if isinstance(value, dict) else []
    for item in (value.values() if isinstance(value, dict) else
                 value if isinstance(value, list) else []):
        found += _dicts(item)
    return found


def _place_raw(container: Any, key: Any, raws: list[str], token: str) -> None:
    """Put a placeholder at ``container[key]`` that ``Fuzzer.next`` replaces by ``token``
    written verbatim into the JSON text (json.dumps cannot write such tokens)."""
    container[key] = RAW.format(len(raws))
    raws.append(token)


@dataclass
class Fuzzed:
    """One message to send: its frames and what it is (for the report)."""

    frames: list[bytes]
    label: str
    tracked_id: str | None = None  # the id it carries unchanged (replies must echo it)
    kind: str = ""  # the message's type field after mutation ("garbage" for garbage)
    throwaway: bool = False  # sent from a socket of its own (zmq may drop the peer)


class Fuzzer:
    """Valid messages of every type and mutations of them, from one seeded generator."""

    def __init__(self, style: str, rng: random.Random, max_bytes: int) -> None:
        self.style = style
        self.rng = rng
        self.max_bytes = max_bytes
        self.count = 0
        self.running: list[str] = []  # generate ids believed running (cancel targets)

    def note(self, onset: float) -> dict:
        """A valid seed note at ``onset``."""
        r = self.rng
        return {"onset": round(onset, 3), "duration": r.choice([0.25, 0.5, 1.0, 2.0]),
                "pitch": r.randint(48, 84), "velocity": r.randint(40, 110)}

    def valid(self, kind: str, ident: str) -> dict:
        """A valid message of type ``kind`` with id ``ident``."""
        r = self.rng
        if kind == "generate":
            origin = r.choice([0.0, 0.0, float(r.randint(0, 2000))])
            seed = [self.note(origin + i * r.choice([0.25, 0.5, 1.0]))
                    for i in range(r.randint(0, 12))]
            end = max((n["onset"] + n["duration"] for n in seed), default=origin)
            message: dict[str, Any] = {
                "v": 1, "type": "generate", "id": ident, "session": f"s{r.randint(0, 7)}",
                "style": self.style, "seed": seed,
                "start_beat": math.ceil(end / 4) * 4 + r.choice([0, 0, 1, 2.5]),
                "bars": r.randint(1, 2)}
            if r.random() < 0.5:
                message["sampling"] = {"temperature": r.choice([0.5, 1.0, 1.5]),
                                       "top_k": r.choice([0, 10]), "seed": r.randint(0, 99)}
            if r.random() < 0.5:
                message["constraints"] = {"pitch_min": 36, "pitch_max": 96,
                                          "scale": [0, 2, 4, 5, 7, 9, 11],
                                          "max_polyphony": r.randint(1, 4)}
            if r.random() < 0.2:
                message["time_signature"] = r.choice([[3, 4], [6, 8], [4, 4]])
            return message
        if kind == "cancel":
            target = r.choice(self.running) if self.running and r.random() < 0.7 else "nope"
            return {"v": 1, "type": "cancel", "id": ident, "target": target}
        if kind == "ping":
            return {"v": 1, "type": "ping", "id": ident, "t": r.random()}
        return {"v": 1, "type": kind, "id": ident}

    # Each mutation changes ``message`` in place (or returns frames of its own) and
    # returns its name; ``raws`` collects number tokens to write verbatim.
    def m_wrong_type(self, message: dict, raws: list[str]) -> str:
        container, key, path = self.rng.choice(_paths(message))
        container[key] = copy.deepcopy(self.rng.choice(WRONG))
        return f"wrong_type({path[-1]})"

    def _raw(self, message: dict, raws: list[str], token: str, name: str) -> str:
        """``token`` in place of a number of ``message`` (any field if it has none)."""
        numeric = [p for p in _paths(message) if isinstance(p[0][p[1]], (int, float))
                   and not isinstance(p[0][p[1]], bool)]
        container, key, path = self.rng.choice(numeric or _paths(message))
        _place_raw(container, key, raws, token)
        return f"{name}({path[-1]})"

    def m_huge_number(self, message: dict, raws: list[str]) -> str:
        return self._raw(message, raws, self.rng.choice(HUGE), "huge_number")

    def m_nonfinite(self, message: dict, raws: list[str]) -> str:
        return self._raw(message, raws, self.rng.choice(NONFINITE), "nan")

    def m_deep(self, message: dict, raws: list[str]) -> str:
        depth = self.rng.choice([20, 64, 200, 5000, 100_000])
        token = ("[" * depth + "]" * depth if self.rng.random() < 0.5
                 else '{"a":' * depth + "1" + "}" * depth)
        container, key, _ = self.rng.choice(_paths(message))
        _place_raw(container, key, raws, token)
        return f"deep({depth})"

    def m_huge_string(self, message: dict, raws: list[str]) -> str:
        n = self.rng.choice([65, 1000, 65_536, 300_000])
        text = self.rng.choice(["x", "é", "\U0001f3b9", "\ud800", "\x00"]) * n
        strings = [p for p in _paths(message) if isinstance(p[0][p[1]], str)]
        container, key, path = self.rng.choice(strings or _paths(message))
        container[key] = text
        return f"huge_string({path[-1]},{n})"

    def _generate(self, message: dict, session: str, **fields: Any) -> None:
        """Turn ``message`` into a generate with ``fields`` (in their order), keeping its
        session and style if it has them."""
        message["type"] = "generate"
        message.update(fields)
        message.setdefault("session", session)
        message.setdefault("style", self.style)

    def m_far(self, message: dict, raws: list[str]) -> str:
        self._generate(message, "far",
                       start_beat=self.rng.choice([1e7, 9_999_999.99, 4.47e6, 1e6, 4e6 + 2]),
                       time_signature=self.rng.choice([[3, 8], [4, 4], [7, 16]]),
                       seed=[self.note(0.0)])
        return "far_start"

    def m_long_seed(self, message: dict, raws: list[str]) -> str:
        n = self.rng.choice([2048, 2049, 4000])
        step = self.rng.choice([0.25, 0.01, 2000.0])
        self._generate(message, "long", seed=[self.note(i * step) for i in range(n)],
                       start_beat=math.ceil(n * step / 4) * 4 + 4)
        return f"long_seed({n}x{step:g})"

    def m_span(self, message: dict, raws: list[str]) -> str:
        far = self.rng.choice([4e6, 4.5e6, 9.9e6, 1e5])
        first = self.note(0.0)
        if self.rng.random() < 0.5:
            first["duration"] = far
            seed = [first]
        else:
            seed = [first, self.note(far)]
        self._generate(message, "span", seed=seed, start_beat=far + 8)
        return f"seed_span({far:g})"

    def m_version(self, message: dict, raws: list[str]) -> str:
        choice = self.rng.choice([0, 2, "1", 1.0, True, None, -1, "missing", "raw"])
        if choice == "missing":
            message.pop("v", None)
        elif choice == "raw":
            token = self.rng.choice(["1.0", "1e0", "10e-1"])
            _place_raw(message, "v", raws, token)
            return f"raw_v({token})"
        else:
            message["v"] = choice
        return f"version({choice!r})"

    def m_type(self, message: dict, raws: list[str]) -> str:
        choice = self.rng.choice(["", "Generate", "GENERATE", "pong", "notes", "done",
                                  "error", 5, None, "missing"])
        if choice == "missing":
            message.pop("type", None)
        else:
            message["type"] = choice
        return f"type({choice!r})"

    def m_unknown_field(self, message: dict, raws: list[str]) -> str:
        target = self.rng.choice(_dicts(message))
        name = self.rng.choice(["temprature", "extra", "Seed", "__proto__", "id2", ""])
        target[name] = copy.deepcopy(self.rng.choice(WRONG))
        return f"unknown_field({name})"

    def m_missing(self, message: dict, raws: list[str]) -> str:
        target = self.rng.choice([d for d in _dicts(message) if d] or [message])
        if not target:
            return "missing(none)"
        key = self.rng.choice(list(target))
        del target[key]
        return f"missing({key})"

    def _field(self, message: dict, name: str, choices: list[Any]) -> str:
        """Set ``message[name]`` to one of ``choices`` (fresh objects each call: a value
        put into a message may be mutated later)."""
        value = self.rng.choice(choices)
        message[name] = value
        return f"{name}({value})"

    def m_time_signature(self, message: dict, raws: list[str]) -> str:
        return self._field(message, "time_signature", [
            [0, 4], [33, 4], [4, 3], [7, 16], [4], [4, 4, 4], [1, 1], [32, 16], [5, 8],
            [1, 16], [32, 1], [-4, 4]])

    def m_constraints(self, message: dict, raws: list[str]) -> str:
        return self._field(message, "constraints", [
            {"pitch_min": 90, "pitch_max": 30}, {"pitch_min": 109, "pitch_max": 127},
            {"pitch_min": 0, "pitch_max": 20}, {"pitch_min": 21, "pitch_max": 22,
                                                "scale": [5]},
            {"scale": []}, {"scale": [12]}, {"scale": [0, 0]}, {"scale": list(range(13))},
            {"max_polyphony": 0}, {"max_polyphony": 17}, {"max_polyphony": 16},
            {"pitch_min": 60, "pitch_max": 60, "scale": [1]}, {"pitch_min": 108,
                                                               "pitch_max": 108}])

    def m_sampling(self, message: dict, raws: list[str]) -> str:
        return self._field(message, "sampling", [
            {"temperature": 0.05}, {"temperature": 5}, {"temperature": 0.049},
            {"temperature": 5.01}, {"top_k": 10 ** 18}, {"top_p": 1e-300}, {"top_p": 0},
            {"min_p": 1}, {"min_p": 1.0000001}, {"seed": 2 ** 63 - 1}, {"seed": 2 ** 63},
            {"seed": -1}, {"greedy": True, "temperature": 5}, {"top_k": 1, "min_p": 1}])

    def m_note(self, message: dict, raws: list[str]) -> str:
        note = self.note(0.0)
        key, value = self.rng.choice([
            ("pitch", 128), ("pitch", -1), ("velocity", 0), ("velocity", 128),
            ("duration", 0), ("duration", -1), ("duration", 1e-300), ("onset", -1),
            ("onset", 1e7), ("onset", 1e7 + 1), ("onset", -1e-9), ("duration", 1e7)])
        note[key] = value
        message["seed"] = [*message.get("seed", [])[:3], note] if isinstance(
            message.get("seed"), list) else [note]
        return f"note({key}={value})"

    def m_id(self, message: dict, raws: list[str]) -> str:
        value = self.rng.choice(["", "x" * 65, "é" * 64, "\ud800", "\x00", " ", "x" * 64])
        message[self.rng.choice(["id", "session", "style", "target"])] = value
        return f"id({value[:3]!r}x{len(value)})"

    def m_bars(self, message: dict, raws: list[str]) -> str:
        return self._field(message, "bars", [0, 64, 65, 10 ** 9, -1])

    def garbage(self) -> tuple[list[bytes], str]:
        """A frame (or frames) that is not one JSON object of the protocol."""
        r = self.rng
        valid = json.dumps(self.valid("ping", "g")).encode()
        choices: list[tuple[Callable[[], list[bytes]], str]] = [
            (lambda: [r.randbytes(r.randint(1, 2000))], "random_bytes"),
            (lambda: [b""], "empty_frame"),
            (lambda: [b"\xff\xfe" + valid], "invalid_utf8"),
            (lambda: [r.choice([b"[]", b"1", b'"s"', b"null", b"true", b"{}"])], "not_object"),
            (lambda: [valid[: r.randint(1, len(valid) - 1)]], "truncated"),
            (lambda: [b"\xef\xbb\xbf" + valid], "bom"),
            (lambda: [json.dumps(self.valid("ping", "g")).encode("utf-16")], "utf16"),
            (lambda: [b'{"v": 1, "v": 2, "type": "ping", "type": "hello"}'], "duplicate_keys"),
            (lambda: [valid, valid], "two_frames"),
            (lambda: [b"", b"x"], "empty_then_frame"),
            (lambda: [b'{"v": 1, "type": "ping", "t": ' + b" " * (self.max_bytes + 10)
                      + b"1}"], "too_large"),
            (lambda: [b'{"v":1,"type":"ping","t":1}' + r.randbytes(8)], "trailing_bytes"),
        ]
        make, label = r.choice(choices)
        return make(), f"garbage:{label}"

    MUTATIONS = ("m_wrong_type", "m_huge_number", "m_nonfinite", "m_deep", "m_huge_string",
                 "m_far", "m_long_seed", "m_span", "m_version", "m_type", "m_unknown_field",
                 "m_missing", "m_time_signature", "m_constraints", "m_sampling", "m_note",
                 "m_id", "m_bars")

    def next(self) -> Fuzzed:
        """The next message: 10 % valid, 10 % garbage, the rest 1-3 mutations."""
        r = self.rng
        self.count += 1
        ident = f"f{self.count}"
        kind = r.choices(["generate", "ping", "hello", "stats", "cancel"], [6, 1, 1, 1, 2])[0]
        if r.random() < 0.0002:
            # Over 16 x max_message_bytes zmq drops the peer: from a socket of its own.
            return Fuzzed([b" " * (ZMQ_LIMIT_FACTOR * self.max_bytes + 1)],
                          "garbage:over_zmq_limit",
                          kind="garbage", throwaway=True)
        roll = r.random()
        if roll < 0.1:
            frames, label = self.garbage()
            return Fuzzed(frames, label, kind="garbage")
        message = self.valid(kind, ident)
        raws: list[str] = []
        names = []
        if roll >= 0.2:
            for _ in range(r.choice([1, 1, 1, 2, 3])):
                names.append(getattr(self, r.choice(self.MUTATIONS))(message, raws))
        text = json.dumps(message)
        for i, raw in enumerate(raws):
            text = text.replace(json.dumps(RAW.format(i)), raw, 1)
        data = text.encode("utf-8", "surrogatepass")
        tracked = ident if message.get("id") == ident and not raws and len(
            data) <= self.max_bytes else None
        label = f"{kind}:{'+'.join(names) if names else 'valid'}"
        # What the engine will take it for (a mutation may have turned a hello into a
        # generate): decides which replies it owes.
        final = message.get("type") if isinstance(message.get("type"), str) else "?"
        # Two or three huge strings can pass zmq's own limit too (a 300,000-character
        # string of "\ud83c\udfb9" escapes is 3.6 MB): zmq then drops the peer, with
        # the streams it had running, so such a message leaves from a socket of its own.
        over = len(data) > ZMQ_LIMIT_FACTOR * self.max_bytes
        return Fuzzed([data], label, tracked_id=tracked, kind=final,
                      throwaway=over)
