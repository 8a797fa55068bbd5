"""The soak's fuzzer: what it sends on the shared connection must be answerable there."""

from __future__ import annotations

import random

from bench.soak.fuzzer import ZMQ_LIMIT_FACTOR, Fuzzer


def test_a_message_over_zmq_s_limit_leaves_from_a_socket_of_its_own():
    """zmq drops the peer of a frame over the engine's hard limit, and with it the
    fuzzing client's running streams: such a message must not use the shared socket."""
    max_bytes = 16_384  # small, so that huge strings pass the hard limit often
    fuzzer = Fuzzer("romantic", random.Random(3), max_bytes)
    mutated_over = 0
    for _ in range(3000):
        item = fuzzer.next()
        size = sum(len(frame) for frame in item.frames)
        if size > ZMQ_LIMIT_FACTOR * max_bytes:
            assert item.throwaway, item.label
            assert item.tracked_id is None
            mutated_over += not item.label.startswith("garbage")
        else:
            assert not item.throwaway, item.label
    assert mutated_over > 0, "no mutated message passed the limit: the test proves nothing"
