"""docs/styles.md is rebuilt from the JSON results alone."""

from __future__ import annotations

from engine.tools.styles_report import render_report


def _results() -> dict:
    style = {
        "facts": {"size_mb": 9.5, "arch": "gpt", "layers": 6, "width": 256,
                  "quantization": "int8", "corpus": "corpus:romantic", "train_pieces": 400,
                  "val_perplexity": 4.5, "val_accuracy": 0.55},
        "heldout": {"perplexity": 4.8, "accuracy": 0.52, "tokens": 50000},
        "heldout_pieces": 12, "heldout_excluded": 40,
        "fidelity": {"generated": 0.4, "judged": 20, "real": 0.8, "ratio": 0.5,
                     "predicted": {"romantic": 8, "folk": 12}},
        "generated": {"pc_distance": 0.2, "key_kept": 0.6, "density": 3.1, "polyphony": 2.2,
                      "empty": 1},
        "real": {"pc_distance": 0.15, "key_kept": 0.7, "density": 3.5, "polyphony": 2.6},
        "fur_elise": {"png": "img/fur_elise_romantic.png", "midi": "img/fur_elise_romantic.mid",
                      "midi_path": "docs/img/fur_elise_romantic.mid"},
        "notes": ["only 3 held-out test pieces"],
    }
    return {"generated_at": "today", "models_dir": "models/pretrained", "data_root": "data",
            "config": {"bars": 8, "prime_bars": 4, "samples": 4,
                       "sampling": {"temperature": 1.0, "top_p": 0.95, "seed": 0}},
            "classifier": {"classes": ["romantic", "folk"], "confusion": [[8, 2], [1, 9]]},
            "primes": [{"name": "fur_elise", "title": "Für Elise", "time_signature": [3, 8],
                        "bars": 9, "notes": 55, "source": "fixture"}],
            "styles": {"romantic": style},
            "command": "melody eval-styles -o docs/styles.md"}


def test_report_shows_every_measure_and_the_verdict() -> None:
    page = render_report(_results())
    assert "| `romantic` | 9.5 MB | gpt 6×256 | int8 | corpus:romantic | 400 | 4.50 | 55% |" in page
    assert "| `romantic` | 4.80 | 52% | 50,000 | 12 | 40 |" in page
    assert "| `romantic` | 40% | 20 | 80% | 0.50 ✗ below aim |" in page
    assert "| `romantic` | 0.20 / 0.15 | 60% / 70% | 3.10 / 3.50 | 2.20 / 2.60 | 1 |" in page
    assert "| romantic | 8 | 2 |" in page
    assert "![Für Elise continued in the romantic style](img/fur_elise_romantic.png)" in page
    assert "melody render docs/img/fur_elise_romantic.mid" in page
    assert "## Caveats" in page and "only 3 held-out test pieces" in page
    assert page.rstrip().endswith("```")


def test_missing_numbers_show_as_dashes() -> None:
    results = _results()
    results["styles"]["romantic"] = {"facts": {}, "notes": []}
    page = render_report(results)
    assert "| `romantic` | – | – | – | – | – |" in page
    assert "## Caveats" not in page
