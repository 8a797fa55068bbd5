"""The fuzz part: one client sends ``bench.soak.fuzzer``'s messages to a standalone engine,
each followed by a ping, while a second client (another process) pings it on its own;
counts ``internal`` replies, unanswered requests, hangs and crashes, and names the requests
that held the other client's pings longest."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import random
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zmq

from bench.live import percentile, rss_mb
from bench.soak.common import UP_TIMEOUT_S, Progress, log_failure, wait_until
from bench.soak.fuzzer import Fuzzer
from bridge.engine_child import free_loopback_port, stop_process

STALL_S = 0.1  # the bound on how long one request may hold other sessions
SENTINEL_TIMEOUT_S = 10.0  # a request whose follow-up ping is not answered by then hangs

# The second client: pings every ``interval`` s and writes "sent-at round-trip" lines
# (round trip -1 when lost); a process of its own so that the fuzzer's client cannot
# delay it.
PINGER = """
import json, signal, sys, time, zmq
endpoint, out, interval = sys.argv[1], sys.argv[2], float(sys.argv[3])
stop = []
signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
sock = zmq.Context().socket(zmq.DEALER)
sock.setsockopt(zmq.LINGER, 0)
sock.connect(endpoint)
seq = 0
with open(out, "w", buffering=1) as fh:
    while not stop:
        seq += 1
        sent, wall = time.perf_counter(), time.monotonic()
        sock.send(json.dumps({"v": 1, "type": "ping", "t": seq}).encode())
        rtt = None
        deadline = sent + 5.0
        while rtt is None and not stop:
            left = deadline - time.perf_counter()
            if left <= 0 or not sock.poll(int(left * 1000) + 1, zmq.POLLIN):
                break
            reply = json.loads(sock.recv())
            if reply.get("t") == seq:
                rtt = time.perf_counter() - sent
        fh.write(f"{wall:.6f} {rtt if rtt is not None else -1:.6f}\\n")
        time.sleep(interval)
"""


def start_engine(model: Path, workdir: Path, name: str) -> tuple[subprocess.Popen, str, Path]:
    """A standalone engine on a free loopback port; its log in ``workdir/name.log``."""
    endpoint = f"tcp://127.0.0.1:{free_loopback_port()}"
    log_path = workdir / f"{name}.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen([sys.executable, "-m", "engine", "--bind", endpoint,
                                    "--model", str(model)], stdout=log,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    return process, endpoint, log_path


class Dealer:
    """A DEALER on the engine that sends frames and reads JSON replies."""

    def __init__(self, context: zmq.Context, endpoint: str) -> None:
        self.sock = context.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)

    def send(self, frames: list[bytes]) -> None:
        """Send one multipart message."""
        self.sock.send_multipart(frames)

    def recv(self, timeout_s: float) -> dict | None:
        """The next reply, or None when none comes within ``timeout_s``."""
        if not self.sock.poll(max(1, int(timeout_s * 1000)), zmq.POLLIN):
            return None
        return json.loads(self.sock.recv())

    def close(self) -> None:
        """Close at once (LINGER 0: unsent messages are dropped)."""
        self.sock.close(0)


def run_fuzz(args: argparse.Namespace, workdir: Path, rng: random.Random) -> dict:
    """``--fuzz`` messages at one engine; a second client's pings measure the stalls."""
    context = zmq.Context()
    engine, endpoint, engine_log = start_engine(args.model, workdir, "fuzz-engine")
    client = Dealer(context, endpoint)
    pinger = None
    result: dict[str, Any] = {"messages": args.fuzz}
    try:
        hello = None
        end = time.monotonic() + UP_TIMEOUT_S
        while hello is None and time.monotonic() < end and engine.poll() is None:
            client.send([b'{"v": 1, "type": "hello"}'])
            hello = client.recv(1.0)
        if hello is None:
            result["error"] = "the engine did not answer hello"
            result["log"] = log_failure(engine_log.read_text(errors="replace"))
            return result
        style = next(iter(hello["styles"]))
        max_bytes = int(hello["limits"]["max_message_bytes"])
        fuzzer = Fuzzer(style, rng, max_bytes)
        pings = workdir / "pings.txt"
        pinger = subprocess.Popen([sys.executable, "-c", PINGER, endpoint, str(pings),
                                   str(args.ping_interval_ms / 1000)])
        time.sleep(2.0)  # idle baseline of the second client's pings
        baseline_until = time.monotonic()
        rss_start = rss_mb(engine.pid)
        log_bytes_start = engine_log.stat().st_size
        replies: Counter[str] = Counter()
        internal: list[dict] = []
        unanswered: list[str] = []
        extra: list[str] = []
        hangs: list[str] = []
        crashes: list[str] = []
        slowest: list[tuple[float, str]] = []
        spans: list[tuple[float, float, str]] = []  # (sent, answered, label) per message
        streams: dict[str, str] = {}  # accepted generate id -> label, until done/error
        labels: dict[str, str] = {}
        kinds: Counter[str] = Counter()
        progress = Progress("fuzz", args.fuzz)
        sentinel = 0

        def take(reply: dict, direct: list[dict]) -> bool:
            """File one reply; True when it is the awaited sentinel pong."""
            kind = reply.get("type")
            code = reply.get("code")
            replies[f"{kind}:{code}" if code else str(kind)] += 1
            rid = reply.get("id")
            if kind == "pong" and reply.get("t") == -sentinel and rid is None:
                return True
            if code == "internal":
                internal.append({"id": rid, "label": labels.get(str(rid), "?"),
                                 "message": str(reply.get("message"))[:300]})
            if rid in streams and kind in ("done", "error"):
                del streams[rid]
                with contextlib.suppress(ValueError):
                    fuzzer.running.remove(rid)
            if kind in ("notes", "done"):
                return False  # a stream accepted earlier (or its late end)
            direct.append(reply)
            return False

        for _ in range(args.fuzz):
            item = fuzzer.next()
            kinds[item.label.split(":")[0]] += 1
            if item.tracked_id:
                labels[item.tracked_id] = item.label
            sentinel += 1
            sent = time.monotonic()
            if item.throwaway:
                throwaway = Dealer(context, endpoint)
                throwaway.send(item.frames)
                time.sleep(0.05)
                throwaway.close()
            else:
                client.send(item.frames)
            client.send([json.dumps({"v": 1, "type": "ping", "t": -sentinel}).encode()])
            direct: list[dict] = []
            deadline = time.monotonic() + SENTINEL_TIMEOUT_S
            got = False
            while not got:
                reply = client.recv(deadline - time.monotonic())
                if reply is None:
                    break
                got = take(reply, direct)
            answered = time.monotonic()
            spans.append((sent, answered, item.label))
            slowest.append((answered - sent, item.label))
            if len(slowest) > 200:
                slowest = sorted(slowest, reverse=True)[:20]
            preview = b"|".join(item.frames)[:200].decode("utf-8", "replace")
            if not got:
                hangs.append(f"{item.label}: {preview}")
                if engine.poll() is not None:
                    crashes.append(f"exit {engine.returncode} after {item.label}: "
                                   + " / ".join(log_failure(engine_log.read_text(
                                       errors="replace"))[-3:]))
                    engine, endpoint, engine_log = start_engine(args.model, workdir,
                                                                f"fuzz-engine-{len(crashes)}")
                    client.close()
                    client = connect_when_up(context, endpoint)
                progress.step(f"internal {len(internal)} hangs {len(hangs)}")
                continue
            errors = [d for d in direct if d.get("type") == "error"]
            if item.kind == "generate" and item.tracked_id and not errors:
                streams[item.tracked_id] = item.label  # accepted: notes and done follow
                fuzzer.running.append(item.tracked_id)
                fuzzer.running = fuzzer.running[-16:]
            elif item.kind not in ("generate", "cancel") and not item.throwaway:
                if not direct:
                    unanswered.append(f"{item.label}: {preview}")
                elif len(direct) > 1:
                    extra.append(f"{item.label}: {len(direct)} replies")
            if item.tracked_id and direct and any(d.get("id") != item.tracked_id
                                                  for d in direct):
                extra.append(f"{item.label}: reply without its id {direct[0]}"[:300])
            if any(d.get("code") == "internal" for d in direct):
                internal[-1]["label"] = item.label
                internal[-1]["request"] = preview
            progress.step(f"internal {len(internal)} hangs {len(hangs)}")

        # Let accepted streams finish: each must end with done (or an error).
        wait_until(lambda: not streams or (take_all(client, take), False)[1], 30.0, 0.0)
        stats = None
        client.send([b'{"v": 1, "type": "stats"}'])
        while stats is None:
            reply = client.recv(5.0)
            if reply is None or reply.get("type") == "stats":
                stats = reply
        rss_end = rss_mb(engine.pid) if engine.poll() is None else float("nan")
        log_text = engine_log.read_text(errors="replace")
        stop_process(pinger, 5.0)
        result.update({
            "style": style, "message_kinds": dict(kinds), "replies": dict(replies),
            "internal": len(internal), "internal_examples": internal[:10],
            "unanswered": len(unanswered), "unanswered_examples": unanswered[:10],
            "extra_replies": len(extra), "extra_examples": extra[:10],
            "hangs": len(hangs), "hang_examples": hangs[:10],
            "crashes": len(crashes), "crash_examples": crashes[:5],
            "streams_without_done": len(streams),
            "slowest_requests_ms": [(round(s * 1000, 1), label) for s, label in
                                    sorted(slowest, reverse=True)[:10]],
            **ping_summary(pings, baseline_until, spans),
            "engine_stats": stats, "engine_rss_mb": {"start": rss_start, "end": rss_end},
            "engine_log_bytes": engine_log.stat().st_size - log_bytes_start,
            "engine_log": str(engine_log),
            "engine_log_tracebacks": log_text.count("Traceback"),
            "engine_alive": engine.poll() is None,
        })
        return result
    finally:
        if pinger is not None:
            stop_process(pinger, 5.0)
        client.close()
        stop_process(engine, 10.0)
        context.term()


def connect_when_up(context: zmq.Context, endpoint: str) -> Dealer:
    """A new client once a (restarted) engine answers a ping."""
    client = Dealer(context, endpoint)
    end = time.monotonic() + UP_TIMEOUT_S
    while time.monotonic() < end:
        client.send([b'{"v": 1, "type": "ping"}'])
        if client.recv(1.0) is not None:
            break
    return client


def ping_summary(pings: Path, baseline_until: float,
                 spans: list[tuple[float, float, str]]) -> dict[str, Any]:
    """The second client's round trips from its file ``pings``: idle (before
    ``baseline_until``) and under fuzz, the ones lost or over ``STALL_S``, and for the
    slowest the fuzzed requests in flight meanwhile (``spans``: sent, answered, label)."""
    rows = [line.split() for line in pings.read_text().splitlines()
            if len(line.split()) == 2]
    every = [(float(t), float(r)) for t, r in rows]
    idle = [r for t, r in every if t < baseline_until and r >= 0]
    busy = [(t, r) for t, r in every if t >= baseline_until]
    rtts = [r for _, r in busy if r >= 0]
    lost = sum(r < 0 for _, r in busy)
    # A lost ping counts as the pinger's 5 s give-up time.
    slow = sorted(((r if r >= 0 else 5.0, t) for t, r in busy
                   if r < 0 or r > STALL_S), reverse=True)
    culprits = []
    for rtt, t in slow[:10]:
        during = [label for s, a, label in spans if s <= t + rtt and a >= t]
        culprits.append({"rtt_ms": round(rtt * 1000, 1),
                         "during": sorted(Counter(during).items(),
                                          key=lambda kv: -kv[1])[:4]})
    return {"pings": len(busy), "pings_lost": lost,
            "ping_ms": {"idle_p50": _ms(percentile(idle, 50)),
                        "idle_max": _ms(max(idle, default=float("nan"))),
                        "p50": _ms(percentile(rtts, 50)), "p99": _ms(percentile(rtts, 99)),
                        "max": _ms(max(rtts, default=float("nan")))},
            "pings_over_100ms": len(slow), "slow_pings": culprits}


def take_all(client: Dealer, take: Callable[[dict, list], bool]) -> None:
    """File every reply waiting on ``client`` (streams finishing)."""
    while True:
        reply = client.recv(0.05)
        if reply is None:
            return
        take(reply, [])


def _ms(seconds: float) -> float:
    """Seconds as ms rounded for the JSON (NaN, for no samples, stays NaN)."""
    return round(seconds * 1000, 2) if not math.isnan(seconds) else float("nan")

