"""A model names its corpora and their licences: dataset manifest -> checkpoint -> card."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

from export.metadata import build_card, training_summary
from models.train.batches import corpus_licences, manifest_summary

MANIFEST = {
    "source": "lieder,pop909",
    "content_hash": "feed",
    "licences": ["CC0 1.0", "MIT (dataset); the songs are commercial Chinese pop"],
    "splits": {"train": {"num_pieces": 3, "tokens": 300}},
    "pieces": {
        "lieder:a.mxl": {"corpus": "lieder", "licence": "CC0 1.0", "style": "romantic"},
        "lieder:b.mxl": {"corpus": "lieder", "licence": "CC0 1.0", "style": "romantic"},
        "pop909:001.mid": {"corpus": "pop909", "style": "pop",
                           "licence": "MIT (dataset); the songs are commercial Chinese pop"},
        "x:mystery.mid": {"corpus": "x", "licence": None, "style": None},
    },
}


def test_each_corpus_is_counted_with_its_licence() -> None:
    assert corpus_licences(MANIFEST) == {
        "lieder": {"licence": "CC0 1.0", "pieces": 2},
        "pop909": {"licence": "MIT (dataset); the songs are commercial Chinese pop",
                   "pieces": 1},
        "x": {"licence": "unknown", "pieces": 1},
    }


def test_the_card_names_the_corpora_and_licences_the_checkpoint_kept() -> None:
    data = manifest_summary(MANIFEST)
    summary = training_summary({"data": data, "metrics": {}, "step": 1})
    assert summary["corpora"]["lieder"] == {"licence": "CC0 1.0", "pieces": 2}
    assert summary["licences"] == MANIFEST["licences"]
    checkpoint = {"arch": "gpt", "data": data, "metrics": {}, "step": 1,
                  "model_config": {"vocab_size": 40, "context_length": 64, "n_layer": 1,
                                   "n_head": 1, "n_embd": 8},
                  "tokenizer": {"format": "melodyd-tokens", "version": 1, "vocab_size": 40}}
    card = build_card(checkpoint, style="any")
    assert card.training["corpora"]["pop909"]["pieces"] == 1


def test_an_older_checkpoint_without_licences_still_exports() -> None:
    summary = training_summary({"data": {"source": "corpus:bach"}, "metrics": {}, "step": 1})
    assert summary["corpora"] == {} and summary["licences"] == []


def test_a_fine_tune_names_its_base_s_corpora_too_down_a_chain() -> None:
    from models.train.checkpoint import model_sources  # noqa: PLC0415

    base = {"data": manifest_summary(MANIFEST)}
    folder = {"source": "/home/me/midi", "licences": [],
              "corpora": {"midi": {"licence": "unknown", "pieces": 4},
                          "lieder": {"licence": "CC BY 4.0", "pieces": 1}}}
    tuned = {"data": folder, "init_data": model_sources(base)}
    again = {"data": {"source": "corpus:bach", "licences": ["public domain"],
                      "corpora": {"bach": {"licence": "public domain", "pieces": 2}}},
             "init_data": model_sources(tuned)}
    summary = training_summary(again)
    assert summary["corpus"] == "corpus:bach"
    assert summary["sources"] == ["lieder,pop909", "/home/me/midi", "corpus:bach"]
    assert summary["corpora"] == {
        "bach": {"licence": "public domain", "pieces": 2},
        # The same corpus name met twice: pieces added, both licences named.
        "lieder": {"licence": "CC BY 4.0; CC0 1.0", "pieces": 3},
        "midi": {"licence": "unknown", "pieces": 4},
        "pop909": {"licence": "MIT (dataset); the songs are commercial Chinese pop",
                   "pieces": 1},
        "x": {"licence": "unknown", "pieces": 1},
    }
    assert summary["licences"] == sorted([*MANIFEST["licences"], "public domain"])
