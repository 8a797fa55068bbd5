"""`melody eval-styles` and `melody styles` on tiny random ONNX models and synthetic data.

The two synthetic "styles" differ plainly (4/4 block chords low down vs one-line 3/4
tunes up high), so the classifier of real music must tell their held-out pieces apart;
the random models say nothing musical, so only ranges and the report's shape are checked.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from engine.model import load_model
from engine.tools.style_eval import heldout_metrics, heldout_sequences
from models.cli import main
from models.core.notes import Note
from models.core.settings import DataSettings
from models.data.dataset import build_dataset
from models.data.midifile import write_midi

# The tests on `setup` need the train extra: torch builds the models, matplotlib draws the
# report's piano rolls. The mark keeps them out of the torch-free CI job.
needs_train = pytest.mark.torch

STYLES = ("chorale", "tune")
PIECES = 16
MAX_EVAL_TOKENS = 2000


def _chorale(seed: int) -> list[Note]:
    rng = np.random.default_rng(seed)
    root = 48 + int(rng.integers(0, 7))
    notes = []
    for beat in range(64):  # 16 bars of 4/4, one chord per beat
        base = root + int(rng.choice([0, 5, 7, 9]))
        notes += [Note(float(beat), 1.0, base + step, 70) for step in (0, 4, 7, 12)]
    return notes


def _tune(seed: int) -> list[Note]:
    rng = np.random.default_rng(seed)
    pitch, notes, beat = 72, [], 0.0
    while beat < 48:  # 16 bars of 3/4, eighths and quarters
        length = float(rng.choice([0.5, 1.0]))
        pitch = int(np.clip(pitch + rng.choice([-2, -1, 1, 2]), 65, 88))
        notes.append(Note(beat, length, pitch, 90))
        beat += length
    return notes


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    pytest.importorskip("torch", reason="tiny models are built with torch (the train extra)")
    pytest.importorskip("matplotlib", reason="the report draws piano rolls")
    from export.tiny import export_tiny_model  # noqa: PLC0415 - torch is optional

    tmp = tmp_path_factory.mktemp("eval_styles")
    for style, make, signature in (("chorale", _chorale, (4, 4)), ("tune", _tune, (3, 4))):
        for i in range(PIECES):
            write_midi(tmp / "midi" / style / f"{style}{i:02d}.mid", make(i),
                       time_signature=signature)
        build_dataset(str(tmp / "midi" / style), tmp / "data" / style,
                      DataSettings(jobs=1, val_fraction=0.125, test_fraction=0.25),
                      progress=False)
    for seed, style in enumerate(STYLES):
        export_tiny_model(tmp / "models" / f"{style}.onnx", seed=seed, style=style)
    return {"root": tmp, "data": tmp / "data", "models": tmp / "models"}


def _png_size(path: Path) -> tuple[int, int]:
    return struct.unpack(">II", path.read_bytes()[16:24])


@needs_train
def test_eval_styles_writes_the_report(setup: dict[str, Path], capsys) -> None:
    out = setup["root"] / "docs" / "styles.md"
    code = main(["eval-styles", "--models-dir", str(setup["models"]), "--data-root",
                 str(setup["data"]), "-o", str(out), "--bars", "2", "--samples", "2",
                 "--max-eval-tokens", str(MAX_EVAL_TOKENS)])
    assert code == 0, capsys.readouterr().err
    model = load_model(setup["models"] / "chorale.onnx")  # both models share these two
    vocab, context = model.tokenizer.vocab_size, model.context_length
    results = json.loads(out.with_suffix(".json").read_text())
    classifier = results["classifier"]
    assert classifier["classes"] == list(STYLES)
    assert min(classifier["real_recall"].values()) >= 0.9  # the synthetic styles differ plainly
    assert results["primes"][0]["name"] == "fur_elise"
    for style in STYLES:
        entry = results["styles"][style]
        held = entry["heldout"]
        # Every held-out token up to the budget, which stops after a whole window.
        sequences, _, _ = heldout_sequences(setup["data"] / style, set())
        available = sum(len(s) - 1 for s in sequences)
        if available <= MAX_EVAL_TOKENS:
            assert held["tokens"] == available
        else:
            assert MAX_EVAL_TOKENS <= held["tokens"] < MAX_EVAL_TOKENS + context
        # An untrained model is about as unsure as a uniform guess over the vocabulary
        # (perplexity = its size); a trained-looking or a broken score is far from it.
        assert vocab / 2 < held["perplexity"] < 2 * vocab, held
        assert held["perplexity"] == pytest.approx(np.exp(held["loss"]))
        # A share of whole tokens, and far from right most of the time.
        correct = held["accuracy"] * held["tokens"]
        assert correct == pytest.approx(round(correct)) and held["accuracy"] < 0.5, held
        fidelity = entry["fidelity"]
        continuations = entry["generated"]["segments"] + entry["generated"]["empty"]
        assert continuations == 2 * len(results["primes"])
        assert fidelity["real"] == classifier["real_recall"][style]
        assert sum(fidelity["predicted"].values()) == fidelity["judged"] <= continuations
        # The share of all continuations (the unjudged, too empty ones count as misses).
        assert fidelity["generated"] == pytest.approx(
            fidelity["predicted"][style] / continuations), fidelity
        png = out.parent / entry["fur_elise"]["png"]
        assert _png_size(png) == (1200, 450)
        assert (out.parent / entry["fur_elise"]["midi"]).is_file()
    page = out.read_text()
    for heading in ("## Held-out perplexity", "## Style fidelity", "## Musical statistics",
                    "## The prime set", "## Für Elise in every style"):
        assert heading in page
    assert "![Für Elise continued in the tune style](img/fur_elise_tune.png)" in page


@needs_train
def test_eval_styles_names_unknown_styles(setup: dict[str, Path], capsys) -> None:
    code = main(["eval-styles", "--models-dir", str(setup["models"]), "--styles", "jazz",
                 "-o", str(setup["root"] / "x.md")])
    assert code == 2
    err = capsys.readouterr().err
    assert "jazz" in err and "chorale" in err


@needs_train
def test_heldout_metrics_score_every_token_across_windows(setup: dict[str, Path]) -> None:
    model = load_model(setup["models"] / "chorale.onnx")
    rng = np.random.default_rng(0)
    length = 2 * model.context_length + 37  # three windows
    ids = rng.integers(4, model.tokenizer.vocab_size, size=length)
    metrics = heldout_metrics(model, [ids], max_tokens=10**6)
    assert metrics["tokens"] == length - 1
    assert metrics["perplexity"] == pytest.approx(np.exp(metrics["loss"]))


@needs_train
def test_styles_lists_installed_models(setup: dict[str, Path], capsys) -> None:
    assert main(["styles", "--dir", str(setup["models"])]) == 0
    out = capsys.readouterr().out
    for style in STYLES:
        assert any(line.startswith(style) and "MB" in line and "gpt" in line
                   for line in out.splitlines())
    assert main(["styles", "--dir", str(setup["models"]), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)["styles"]
    assert [row["style"] for row in listed] == list(STYLES)
    assert all(row["size_mb"] > 0 and row["quantization"] == "none" for row in listed)


def test_styles_names_each_corpus_with_its_piece_count_and_licence() -> None:
    from engine.tools.styles_cli import source_lines  # noqa: PLC0415

    row = {"style": "any", "token_styles": ["folk"],
           "corpora": {"webern": {"pieces": 1, "licence": "public domain"},
                       "lieder": {"pieces": 1460, "licence": "CC0 1.0"}, "x": {}}}
    assert source_lines(row) == [
        "  any also plays, by style token: folk",
        "  trained on: webern (1 piece, public domain); lieder (1460 pieces, CC0 1.0); "
        "x (? pieces, unknown)"]


def test_styles_reports_a_broken_model(tmp_path: Path, capsys) -> None:
    (tmp_path / "broken.onnx").write_bytes(b"not a model")
    assert main(["styles", "--dir", str(tmp_path)]) == 1
    assert "broken: cannot be loaded" in capsys.readouterr().out


@needs_train
def test_fixed_primes_come_from_held_out_pieces(setup: dict[str, Path]) -> None:
    from models.analysis.primes import fixed_primes  # noqa: PLC0415
    from models.data.manifest import load_manifest  # noqa: PLC0415

    primes = fixed_primes(setup["data"], styles=STYLES, bars=4)
    assert [p.name for p in primes] == ["fur_elise", "chorale_test", "tune_test"]
    assert primes == fixed_primes(setup["data"], styles=STYLES, bars=4)  # deterministic
    for prime, style in zip(primes[1:], STYLES, strict=True):
        test_pieces = load_manifest(setup["data"] / style)["splits"]["test"]["pieces"]
        assert prime.source.split(": ", 1)[1] in test_pieces
        assert all(0 <= n.onset < prime.length for n in prime.notes)
    assert primes[2].time_signature == (3, 4)
    assert primes[0].length == 13.5  # Für Elise: the upbeat bar and 8 bars of 3/8


@needs_train
def test_one_style_is_judged_against_every_style_dataset(setup: dict[str, Path]) -> None:
    out = setup["root"] / "one" / "styles.md"
    code = main(["eval-styles", "--models-dir", str(setup["models"]), "--data-root",
                 str(setup["data"]), "--styles", "tune", "-o", str(out), "--bars", "2",
                 "--samples", "1", "--max-eval-tokens", "500"])
    assert code == 0
    results = json.loads(out.with_suffix(".json").read_text())
    assert list(results["styles"]) == ["tune"]
    assert results["classifier"]["classes"] == ["tune", "chorale"]
    assert results["styles"]["tune"]["fidelity"]["real"] >= 0.9
