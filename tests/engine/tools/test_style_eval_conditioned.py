"""`melody eval-styles --data`: the style-conditioned model, per style token, on its dataset.

A tiny conditioned dataset is built with the tiny conditioned model's vocabulary, by the
build's own code, from three synthetic "styles" of the model's: ``baroque`` block chords in
4/4 low down, ``romantic`` songs in 3/4 (a lead line up high over accompaniment chords, so
they can be accompanied) and ``pop``, two pieces that all fall in the train split (as
``modern`` has no held-out piece in the real dataset). The random model says nothing
musical, so only the bookkeeping, the arithmetic and the page are checked, against what
the dataset's manifest says.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engine.model import load_model
from engine.tools.conditioned_eval import (
    NEUTRAL,
    OWN,
    TOO_EMPTY,
    fidelity,
    fidelity_by_kind,
    style_test_sequences,
)
from engine.tools.conditioned_report import fidelity_cell, render_report
from engine.tools.style_eval import Continuation, heldout_metrics_with_head
from models.analysis.primes import NEUTRAL_PRIMES, Prime, neutral_primes
from models.analysis.style_classifier import dataset_segments
from models.cli import main
from models.core.notes import Note
from models.core.settings import DataSettings
from models.data import dataset
from models.data.dataset import build_dataset
from models.data.manifest import load_manifest
from models.data.midifile import write_midi
from models.data.sources import Source
from models.data.splits import split_pieces

PIECES = 12
BARS = 2
SAMPLES = 2
OPENINGS = 2
MAX_PIECE_TOKENS = 600
ACCOMPANY_PIECES = 2
SPLITS = {"val_fraction": 0.2, "test_fraction": 0.25}


def _chorale(seed: int) -> list[Note]:
    rng = np.random.default_rng(seed)
    root = 48 + int(rng.integers(0, 7))
    notes = []
    for beat in range(64):  # 16 bars of 4/4, one four-note chord per beat
        base = root + int(rng.choice([0, 5, 7, 9]))
        notes += [Note(float(beat), 1.0, base + step, 70) for step in (0, 4, 7, 12)]
    return notes


def _song(seed: int) -> tuple[list[Note], list[Note]]:
    """16 bars of 3/4: a lead of eighths and quarters up high, a chord under each bar."""
    rng = np.random.default_rng(100 + seed)
    pitch, lead, beat = 76, [], 0.0
    while beat < 48:
        length = float(rng.choice([0.5, 1.0]))
        pitch = int(np.clip(pitch + rng.choice([-2, -1, 1, 2]), 70, 88))
        lead.append(Note(beat, length, pitch, 90))
        beat += length
    chords = [Note(bar * 3.0, 3.0, 48 + step, 60) for bar in range(16) for step in (0, 4, 7)]
    return lead, chords


def _train_only_names(count: int) -> list[str]:
    """Piece names that the split's hash puts in the train split."""
    names = []
    for number in range(1000):
        name = f"tune{number:03d}.mid"
        if name in split_pieces([name], SPLITS["val_fraction"], SPLITS["test_fraction"],
                                0)["train"]:
            names.append(name)
        if len(names) == count:
            return names
    raise AssertionError("no train-only names")


# The tests on `built` run the whole command, whose report draws piano rolls with
# matplotlib (the train extra): the mark keeps them out of the torch-free CI job.
needs_train = pytest.mark.torch


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, tiny_conditioned_onnx: Path,
          ) -> dict[str, Any]:
    """The tiny conditioned dataset (in the model's vocabulary) and the evaluation's results."""
    pytest.importorskip("matplotlib", reason="the report draws piano rolls (the train extra)")
    tmp = tmp_path_factory.mktemp("eval_conditioned")
    files: dict[str, list[Path]] = {"baroque": [], "romantic": [], "pop": []}
    for i in range(PIECES):
        files["baroque"].append(write_midi(tmp / "midi" / "baroque" / f"chorale{i:02d}.mid",
                                           _chorale(i)))
        lead, chords = _song(i)
        files["romantic"].append(write_midi(
            tmp / "midi" / "romantic" / f"song{i:02d}.mid", [], time_signature=(3, 4),
            tracks=[("lead", lead), ("accompaniment", chords)]))
    for i, name in enumerate(_train_only_names(2)):
        line = [Note(b * 0.5, 0.5, 60 + (i + b) % 12, 80) for b in range(64)]
        files["pop"].append(write_midi(tmp / "midi" / "pop" / name, line))

    def resolve(spec: str, *args: object, **kwargs: object) -> Source:
        return Source(tmp / "midi" / spec, [(f, f.name) for f in files[spec]], [],
                      {f.name: {"style": spec, "licence": "CC0", "corpus": spec}
                       for f in files[spec]})

    model = load_model(tiny_conditioned_onnx)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(dataset, "resolve_source", resolve)
        build_dataset("baroque,romantic,pop", tmp / "data", DataSettings(jobs=1, **SPLITS),
                      model.tokenizer, progress=False)
    out = tmp / "docs" / "styles.md"
    code = main(["eval-styles", "--data", str(tmp / "data"), "--model",
                 str(tiny_conditioned_onnx), "-o", str(out), "--bars", str(BARS),
                 "--samples", str(SAMPLES), "--openings", str(OPENINGS),
                 "--max-eval-tokens", "100000", "--max-piece-tokens", str(MAX_PIECE_TOKENS),
                 "--accompany-pieces", str(ACCOMPANY_PIECES)])
    assert code == 0
    return {"data": tmp / "data", "out": out, "model": model,
            "results": json.loads(out.with_suffix(".json").read_text()),
            "page": out.read_text(), "onnx": tiny_conditioned_onnx}


# ----------------------------------------------------------------- the evaluation
@needs_train
def test_every_style_token_of_the_model_is_reported(built: dict[str, Any]) -> None:
    results = built["results"]
    assert list(results["styles"]) == ["baroque", "romantic", "pop"]
    assert results["mode"] == "conditioned"
    counts = results["dataset_styles"]
    assert counts["pop"] == {"train": 2, "validation": 0, "test": 0}
    assert counts["baroque"]["test"] >= 1 and counts["romantic"]["test"] >= 1
    for style in ("baroque", "romantic", "pop"):
        assert f"| `{style}` |" in built["page"]


@needs_train
def test_the_classifier_learns_the_manifest_s_styles(built: dict[str, Any]) -> None:
    classifier = built["results"]["classifier"]
    # pop has train pieces but no held-out ones: no yardstick, so no class.
    assert classifier["classes"] == ["baroque", "romantic"]
    assert classifier["left_out"] == {"pop": "no held-out segments"}
    for style in ("baroque", "romantic", "pop"):
        # The segments of exactly that style's pieces, as the manifest names them.
        assert classifier["train_segments"][style] == len(dataset_segments(
            built["data"], "train", BARS, max_per_piece=8, max_segments=1500, style=style))
    # Chords in 4/4 and a song in 3/4 differ plainly: only right labels give this.
    assert min(classifier["real_recall"].values()) >= 0.9, classifier


@needs_train
def test_held_out_tokens_are_scored_under_the_style_and_under_any(
        built: dict[str, Any]) -> None:
    vocab = built["model"].tokenizer.vocab_size
    for style in ("baroque", "romantic"):
        entry = built["results"]["styles"][style]
        sequences = style_test_sequences(built["data"], style)
        expected = sum(min(len(s) - 2, MAX_PIECE_TOKENS) for s in sequences)
        for key in ("heldout", "heldout_any"):
            held = entry[key]
            # Every token after BOS Style, up to the per-piece cap, once.
            assert held["tokens"] == expected and held["sequences"] == len(sequences)
            assert vocab / 2 < held["perplexity"] < 2 * vocab, held  # a random model
            assert held["perplexity"] == pytest.approx(math.exp(held["loss"]))
            assert held["opening"]["tokens"] == sum(min(len(s) - 2, 256) for s in sequences)
        assert entry["heldout"]["loss"] != entry["heldout_any"]["loss"]  # another head
    assert "heldout" not in built["results"]["styles"]["pop"]


@needs_train
def test_neutral_primes_and_own_openings_are_continued_and_judged(
        built: dict[str, Any]) -> None:
    results = built["results"]
    assert [p["name"] for p in results["primes"]] == list(NEUTRAL_PRIMES)
    classifier = results["classifier"]
    for style in ("baroque", "romantic"):
        entry = results["styles"][style]
        test_pieces = set(load_manifest(built["data"])["splits"]["test"]["pieces"])
        openings = entry["openings"]
        assert 1 <= len(openings) <= OPENINGS
        assert all(o["source"].split(": ", 1)[1] in test_pieces for o in openings)
        fid = entry["fidelity"]
        assert set(fid) == {*NEUTRAL_PRIMES, NEUTRAL, OWN}
        for kind in NEUTRAL_PRIMES:
            assert fid[kind]["continuations"] == SAMPLES
        assert fid[NEUTRAL]["continuations"] == 3 * SAMPLES
        assert fid[NEUTRAL]["recognised"] == sum(fid[k]["recognised"] for k in NEUTRAL_PRIMES)
        assert fid[OWN]["continuations"] == SAMPLES * len(openings)
        for result in fid.values():
            assert result["real"] == classifier["real_recall"][style]
            assert result["share"] == result["recognised"] / result["continuations"]
            assert result["ratio"] == pytest.approx(result["share"] / result["real"])
            assert result["met"] == (result["ratio"] >= 0.8)
        # Every continuation gets one verdict (a class, or too empty to judge).
        assert sum(entry["verdicts"][NEUTRAL].values()) == 3 * SAMPLES
        assert entry["generated"][NEUTRAL]["continuations"] == 3 * SAMPLES
        assert entry["real"]["segments"] > 0
    pop = results["styles"]["pop"]
    assert pop["fidelity"] == {} and pop["openings"] == []
    assert sum(pop["verdicts"][NEUTRAL].values()) == 3 * SAMPLES  # still heard as something
    assert any("no held-out" in note for note in pop["notes"])
    # The baseline: the same neutral primes under "any style", judged for every class.
    baseline = results["any"]["fidelity"]
    assert set(baseline) == {"baroque", "romantic"}
    for style, kinds in baseline.items():
        assert set(kinds) == {*NEUTRAL_PRIMES, NEUTRAL}
        assert kinds[NEUTRAL]["continuations"] == 3 * SAMPLES
        assert kinds[NEUTRAL]["recognised"] == results["any"]["verdicts"][NEUTRAL].get(style, 0)


@needs_train
def test_held_out_lead_lines_are_accompanied(built: dict[str, Any]) -> None:
    rows = built["results"]["accompaniment"]
    # Only romantic's pieces have a lead and an accompaniment (and held-out ones).
    assert [(r["style"], r["accompaniment"]) for r in rows] == [
        ("romantic", "real"), ("romantic", "melodyd")]
    real = rows[0]
    assert real["pieces"] == ACCOMPANY_PIECES
    # The real accompaniment: one three-note chord per 3/4 bar.
    assert real["notes_per_beat"] == pytest.approx(1.0)
    assert real["polyphony_p95"] == 3


@needs_train
def test_the_page_and_the_json_are_written(built: dict[str, Any]) -> None:
    page = built["page"]
    for heading in ("## Held-out perplexity and accuracy", "## Style fidelity",
                    "## Musical statistics", "## Accompaniment", "## The primes",
                    "## Für Elise in every style", "## Caveats", "## Reproduce"):
        assert heading in page, heading
    assert "![Für Elise continued in the romantic style](img/fur_elise_romantic.png)" in page
    assert (built["out"].parent / "img" / "fur_elise_romantic.mid").is_file()
    assert "`folk_tune`" in page and "`c_major`" in page
    assert "The baseline prime by prime" in page
    assert "**The style token's weight.**" in page  # the reading, from the held-out scores
    command = page.rstrip().splitlines()[-2]
    assert command.startswith("melody eval-styles --data ") and "--samples 2" in command


@needs_train
def test_a_dataset_of_another_vocabulary_is_refused(built: dict[str, Any], tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    other = tmp_path / "other"
    other.mkdir()
    manifest = load_manifest(built["data"])
    manifest["tokenizer"]["fingerprint"] = "0000000000000000"
    (other / "manifest.json").write_text(json.dumps(manifest))
    code = main(["eval-styles", "--data", str(other), "--model", str(built["onnx"]),
                 "-o", str(tmp_path / "x.md")])
    assert code == 2
    assert "another vocabulary" in capsys.readouterr().err


@needs_train
def test_a_style_the_model_lacks_is_named(built: dict[str, Any], tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["eval-styles", "--data", str(built["data"]), "--model", str(built["onnx"]),
                 "--styles", "jazz", "-o", str(tmp_path / "x.md")])
    assert code == 2
    err = capsys.readouterr().err
    assert "jazz" in err and "baroque" in err


@needs_train
def test_a_model_without_style_tokens_is_refused(built: dict[str, Any], tiny_onnx_model: Path,
                                                 tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["eval-styles", "--data", str(built["data"]), "--model", str(tiny_onnx_model),
                 "-o", str(tmp_path / "x.md")])
    assert code == 2
    assert "no style tokens" in capsys.readouterr().err


# ----------------------------------------------------------------- held-out scoring
def test_a_head_replaces_the_piece_s_own_and_every_token_after_it_is_scored_once(
        tiny_conditioned_onnx: Path) -> None:
    model = load_model(tiny_conditioned_onnx)
    tokenizer = model.tokenizer
    bos, romantic, pop = (tokenizer.bos_id, tokenizer.style_id("romantic"),
                          tokenizer.style_id("pop"))
    rng = np.random.default_rng(0)
    body = rng.integers(4, tokenizer.style_ids[0], size=2 * model.context_length + 37)
    piece = np.concatenate([[bos, pop], body])
    metrics = heldout_metrics_with_head(model, [piece], [bos, romantic], 10**6, opening=50)
    assert metrics["tokens"] == len(body) and metrics["opening"]["tokens"] == 50
    # The same piece written under romantic's head scores the same: the head is replaced.
    again = heldout_metrics_with_head(model, [np.concatenate([[bos, romantic], body])],
                                      [bos, romantic], 10**6)
    assert again["loss"] == pytest.approx(metrics["loss"])
    # A short piece, by hand: BOS Style t0 t1 ...; the style token predicts t0, and so on.
    short = body[:40]
    logits = model.forward(np.concatenate([[bos, romantic], short[:-1]]))[1:].astype(float)
    log_z = np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)) + logits.max(1)
    expected = float(np.mean(log_z - logits[np.arange(len(short)), short]))
    scored = heldout_metrics_with_head(model, [np.concatenate([[bos, pop], short])],
                                       [bos, romantic], 10**6)
    assert scored["loss"] == pytest.approx(expected, rel=1e-6)
    capped = heldout_metrics_with_head(model, [piece, piece], [bos, romantic], 10**6,
                                       max_piece_tokens=100)
    assert capped["tokens"] == 200 and capped["sequences"] == 2


# ----------------------------------------------------------------- fidelity arithmetic
@pytest.mark.parametrize(("given", "expected"), [
    ((3, 4, 0.75), (0.75, 1.0, True)),
    ((4, 8, 0.625), (0.5, 0.8, True)),  # exactly the aim
    ((1, 4, 0.5), (0.25, 0.5, False)),
    ((4, 4, 0.5), (1.0, 2.0, True)),  # a style heard more often than its real music
    ((0, 0, 0.9), (None, None, None)),  # nothing generated
    ((2, 4, None), (0.5, None, None)),  # no yardstick
    ((2, 4, float("nan")), (0.5, None, None)),
    ((2, 4, 0.0), (0.5, None, None)),  # real music never recognised: no ratio
], ids=["at-real", "at-aim", "below", "above-real", "none", "no-class", "nan", "zero"])
def test_the_fidelity_ratio(given: tuple[int, int, float | None],
                            expected: tuple[float | None, float | None, bool | None]) -> None:
    share, ratio, met = expected
    result = fidelity(*given)
    assert result["share"] == (pytest.approx(share) if share is not None else None)
    assert result["ratio"] == (pytest.approx(ratio) if ratio is not None else None)
    assert result["met"] is met


def _continuation(prime: Prime) -> Continuation:
    return Continuation("pop", prime, 0, [], "complete")


def test_fidelity_by_kind_pools_the_neutral_primes_and_counts_empty_as_missed() -> None:
    fur, c_major, folk = neutral_primes()
    own = Prime("pop_test_1", "pop", c_major.notes, (4, 4), 2, "test")
    continuations = [_continuation(p) for p in (fur, fur, c_major, c_major, folk, folk,
                                                own, own)]
    verdicts = ["pop", "pop", "pop", "folk", TOO_EMPTY, "folk", "pop", "romantic"]
    result = fidelity_by_kind("pop", continuations, verdicts, 0.5)
    assert {k: (v["recognised"], v["continuations"]) for k, v in result.items()} == {
        "fur_elise": (2, 2), "c_major": (1, 2), "folk_tune": (0, 2), NEUTRAL: (3, 6),
        OWN: (1, 2)}
    assert result["fur_elise"]["ratio"] == 2.0 and result["folk_tune"]["met"] is False
    assert result[NEUTRAL]["ratio"] == pytest.approx(1.0) and result[NEUTRAL]["met"]


def test_the_c_major_prime_is_the_jam_harness_s_call() -> None:
    from engine.tools.jam import synthetic_calls  # noqa: PLC0415

    call = next(c for c in synthetic_calls() if c.name == "c_major")
    prime = next(p for p in neutral_primes() if p.name == "c_major")
    assert prime.notes == call.notes and prime.time_signature == call.time_signature


# ----------------------------------------------------------------- the page
def test_a_fidelity_cell_shows_share_ratio_and_verdict() -> None:
    assert fidelity_cell(fidelity(1, 4, 0.8)) == "25% · 0.31 ✗"
    assert fidelity_cell(fidelity(4, 4, 0.8)) == "100% · 1.25 ✓"
    assert fidelity_cell(fidelity(1, 4, None)) == "25%"
    assert fidelity_cell(None) == "–"


def test_the_page_names_each_shortfall_with_what_was_heard_instead() -> None:
    results = {
        "styles": {"pop": {
            "pieces": {"train": 10, "validation": 1, "test": 3},
            "heldout": {"perplexity": 4.0, "accuracy": 0.5, "loss": 1.386, "tokens": 900,
                        "sequences": 3, "opening": {"perplexity": 5.0, "per_piece": 256}},
            "heldout_any": {"perplexity": 4.2, "accuracy": 0.49, "loss": 1.435,
                            "opening": {"perplexity": 5.5}},
            "fidelity": {"fur_elise": fidelity(1, 4, 0.8), "own": fidelity(4, 4, 0.8)},
            "verdicts": {"fur_elise": {"pop": 1, "folk": 3}, "own": {"pop": 4}},
            "notes": ["only 3 held-out pieces"]}},
        "classifier": {"classes": ["folk", "pop"], "train_segments": {"folk": 9, "pop": 8},
                       "confusion": [[9, 1], [2, 8]]},
        "command": "melody eval-styles --data d",
    }
    page = render_report(results)
    assert "| `pop` | 3 | 3 | 900 | 4.00 | 50% | 4.20 | 49% | +0.049 | 5.00 / 5.50 |" in page
    assert "| `pop` | 80% | 25% · 0.31 ✗ | – | – | – | 100% · 1.25 ✓ | – |" in page
    assert "- `pop`: Für Elise 0.31, heard as folk 75%." in page
    assert "## Caveats" in page and "only 3 held-out pieces" in page
    assert page.rstrip().endswith("```")
