"""engine.server with many streams: each equals what its decoder gives alone, streams of
one model advance in one batched step per loop iteration, and a burst of starts is spread
over iterations (a count and a time budget) so running streams and pings keep their pace.
"""

from __future__ import annotations

import threading

import pytest
from server_rig import SEED, Client, alone, generate

from engine import server_cli
from models.core.exceptions import EngineError
from models.core.notes import Note
from models.core.settings import EngineSettings


def test_stream_equals_the_decoder_alone(start_server, context, style, tiny_onnx_model):
    request = generate("g1", style, sampling={"greedy": True})
    expected = alone(tiny_onnx_model, request)
    server = start_server()
    client = Client(context, server.endpoint)
    client.send(request)
    notes, done = client.stream("g1")
    assert notes == expected
    assert done["notes"] == len(notes) and done["tokens"] > 0
    assert done["prefill_tokens"] > 0 and done["reused_tokens"] == 0
    assert all(note.onset >= 4.0 - 1e-9 for note in notes)


def test_two_clients_get_independent_correct_streams(start_server, context, style,
                                                     tiny_onnx_model):
    request_a = generate("same-id", style, sampling={"greedy": True})
    request_b = generate("same-id", style, seed=SEED[:1], start_beat=8.0, bars=3,
                         sampling={"seed": 11, "temperature": 1.2})
    expected_a = alone(tiny_onnx_model, request_a)
    expected_b = alone(tiny_onnx_model, request_b)
    assert expected_a != expected_b
    server = start_server()
    a = Client(context, server.endpoint)
    b = Client(context, server.endpoint)
    # Same id and same session name on both clients: they must not collide.
    a.send(request_a)
    b.send(request_b)
    results: dict[str, list[Note]] = {}

    def read(name: str, client: Client) -> None:
        results[name] = client.stream("same-id")[0]

    readers = [threading.Thread(target=read, args=(n, c), daemon=True)
               for n, c in (("a", a), ("b", b))]
    for reader in readers:
        reader.start()
    for reader in readers:
        reader.join(60)
    assert not any(reader.is_alive() for reader in readers), "a stream never ended"
    assert results["a"] == expected_a
    assert results["b"] == expected_b
    stats = a.ask({"v": 1, "type": "stats"})
    assert stats["clients"] == 2 and stats["sessions"] == 2 and stats["requests"] == 2


def test_sessions_of_one_style_share_one_step_per_iteration(start_server, context, style,
                                                            tiny_onnx_model):
    server = start_server()
    decoder = server.decoders[style]
    real_step, real_iterate = decoder.step, server._iterate
    iteration = [0]
    # (iteration, batch size, generations decoding, prompts prefilling in the batch,
    # prompt tokens those run, the step's prompt budget)
    pace = decoder.pace
    calls: list[tuple[int, int, int, int, int, int]] = []

    def counting_iterate() -> None:
        iteration[0] += 1
        real_iterate()

    def counting_step(generations) -> None:
        decoding = sum(not s.generation.prefill_rest and not s.generation.done
                       for s in server.streams.running.values())
        calls.append((iteration[0], len(generations), decoding,
                      sum(bool(g.prefill_rest) for g in generations),
                      sum(pace.chunk(len(g.prefill_rest)) for g in generations if g.prefill_rest),
                      pace.step_tokens))
        real_step(generations)

    server._iterate, decoder.step = counting_iterate, counting_step
    client = Client(context, server.endpoint)
    requests = [generate(f"r{i}", style, session=f"s{i}", sampling={"seed": i})
                for i in range(4)]
    for request in requests:
        client.send(request)
    streams: dict[str, list[Note]] = {r["id"]: [] for r in requests}
    finished = 0
    while finished < len(requests):
        message = client.recv()
        if message["type"] == "notes":
            streams[message["id"]].extend(Note(**n) for n in message["notes"])
        else:
            assert message["type"] == "done", message
            finished += 1
    iterations = [it for it, *_ in calls]
    assert len(iterations) == len(set(iterations)), "two steps in one loop iteration"
    # Every decoding generation is in every step; prompts take turns, at most one chunk
    # of tokens a step (these short ones share one).
    assert all(batch - chunks == decoding for _, batch, decoding, chunks, *_ in calls), \
        "a generation was left out"
    assert all(tokens <= budget for *_, tokens, budget in calls), \
        "over a step's budget of prompt in a step"
    assert max(batch for _, batch, *_ in calls) >= 2, "no two sessions were ever batched"
    stats = client.ask({"v": 1, "type": "stats"})["styles"][style]
    assert stats["steps"] == len(calls) and stats["rows"] == sum(b for _, b, *_ in calls)
    # Batched decoding gives what each request gives alone.
    for request in requests:
        assert streams[request["id"]] == alone(tiny_onnx_model, request), request["id"]


def test_a_burst_of_requests_starts_a_few_per_iteration(start_server, context, style):
    server = start_server()
    decoder = server.decoders[style]
    real_start, real_iterate = decoder.start, server._iterate
    iteration = [0]
    starts: list[tuple[int, int]] = []  # (iteration, streams running before this start)

    def counting_iterate() -> None:
        iteration[0] += 1
        real_iterate()

    def counting_start(session_key, request, request_id=None, **options):
        starts.append((iteration[0], len(server.streams.running)))
        return real_start(session_key, request, request_id, **options)

    server._iterate, decoder.start = counting_iterate, counting_start
    client = Client(context, server.endpoint)
    for i in range(12):
        client.send(generate(f"r{i}", style, session=f"s{i}", sampling={"seed": i}))
    finished = 0
    while finished < 12:
        finished += client.recv()["type"] == "done"
    per_iteration: dict[int, int] = {}
    for it, running in starts:
        if running:  # the cap applies while other streams are running
            per_iteration[it] = per_iteration.get(it, 0) + 1
    assert len(starts) == 12
    assert max(per_iteration.values()) <= 4


def test_a_style_asked_by_name_may_be_played_by_an_installed_conditioned_model(
        tmp_path, monkeypatch, tiny_conditioned_onnx):
    """`melodyd engine --style pop` with no pop.onnx: an installed conditioned model plays
    it by token; a style nothing plays is refused at start with the served ones listed."""
    import shutil  # noqa: PLC0415

    import engine.model  # noqa: PLC0415

    shutil.copy(tiny_conditioned_onnx, tmp_path / "any.onnx")
    monkeypatch.setattr(engine.model, "PRETRAINED_DIR", tmp_path)
    decoders = server_cli.load_decoders(["pop"], [], EngineSettings())
    assert "pop" in decoders and decoders["pop"] is decoders["baroque"]
    with pytest.raises(EngineError, match=r"style 'jazz' is not installed.*served: .*pop"):
        server_cli.load_decoders(["jazz"], [], EngineSettings())


def test_a_conditioned_model_serves_each_of_its_styles_in_one_batch(start_server, context,
                                                                    tiny_conditioned_onnx):
    """A style is a token of a conditioned model: every style it names is served by the
    same decoder, and sessions in different styles share its steps."""
    decoders = server_cli.load_decoders([], [str(tiny_conditioned_onnx)], EngineSettings())
    named = {"tiny-conditioned", "any", "baroque", "romantic", "pop"}
    assert set(decoders) == named
    assert len({id(d) for d in decoders.values()}) == 1
    server = start_server(decoders=decoders)
    decoder = decoders["pop"]
    real_step, real_iterate = decoder.step, server._iterate
    iteration = [0]
    calls: list[tuple[int, int]] = []

    def counting_iterate() -> None:
        iteration[0] += 1
        real_iterate()

    def counting_step(generations) -> None:
        calls.append((iteration[0], len(generations)))
        real_step(generations)

    server._iterate, decoder.step = counting_iterate, counting_step
    client = Client(context, server.endpoint)
    hello = client.ask({"v": 1, "type": "hello", "id": "h"})
    assert named <= set(hello["styles"])
    requests = [generate(f"r{i}", style, session=f"s{i}", sampling={"seed": i}, bars=4)
                for i, style in enumerate(("baroque", "pop"))]
    for request in requests:
        client.send(request)
    done = 0
    while done < len(requests):
        message = client.recv()
        assert message["type"] in ("notes", "done"), message
        done += message["type"] == "done"
    iterations = [it for it, _ in calls]
    assert len(iterations) == len(set(iterations)), "two steps of one model in an iteration"
    assert max(batch for _, batch in calls) == 2, "the two styles never shared a step"


def test_start_work_in_one_iteration_is_bounded(start_server, context, style, monkeypatch):
    """A burst of generates is started within a time budget per iteration, so a ping
    queued behind heavy starts waits one iteration, not all of them."""
    import engine.server as server_module  # noqa: PLC0415

    monkeypatch.setattr(server_module, "_START_BUDGET_S", 0.0)
    server = start_server()
    decoder = server.decoders[style]
    real_start, real_iterate = decoder.start, server._iterate
    iteration = [0]
    started: list[int] = []

    def counting_iterate() -> None:
        iteration[0] += 1
        real_iterate()

    def counting_start(*args, **kwargs):
        started.append(iteration[0])
        return real_start(*args, **kwargs)

    server._iterate, decoder.start = counting_iterate, counting_start
    client = Client(context, server.endpoint)
    requests = [generate(f"r{i}", style, session=f"s{i}", bars=1) for i in range(3)]
    for request in requests:
        client.send(request)
    done = 0
    while done < len(requests):
        done += client.recv()["type"] == "done"
    assert len(started) == 3
    assert len(set(started)) == 3, "two starts in one iteration despite a spent budget"

