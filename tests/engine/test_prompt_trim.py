"""A seed too long for the model's budget: encoded once, cut at a bar in token space, and
equal token for token to the prompt of the shorter seed (Style, Role, Bar, TimeSig)."""

from __future__ import annotations

import random

import pytest

from engine.grammar import VocabularyMasks
from engine.prompt import CUT_STEP_BARS, build_prompt
from models.core.notes import ROLES, Note
from models.core.protocol.messages import GenerateRequest
from models.core.settings import TokensSettings
from models.core.tokenizer import MelodyTokenizer

SIGNATURES = [(4, 4), (3, 4), (6, 8), (3, 8)]


@pytest.fixture(scope="module", params=["plain", "conditioned"])
def tokenizer(request) -> MelodyTokenizer:
    if request.param == "plain":
        return MelodyTokenizer(TokensSettings())
    return MelodyTokenizer(TokensSettings(style_slots=4, styles=("baroque", "romantic"),
                                          roles=True))


def _bar_length(signature: tuple[int, int]) -> float:
    return signature[0] * 4.0 / signature[1]


def _random_request(rng: random.Random, tokenizer: MelodyTokenizer) -> GenerateRequest:
    """Notes on the grid over up to 12 bars (some empty), with roles that change."""
    signature = rng.choice(SIGNATURES)
    bar = _bar_length(signature)
    step = (4.0 / signature[1]) / tokenizer.settings.positions_per_beat
    per_bar = round(bar / step)
    bars = rng.randint(1, 12)
    empty = {b for b in range(bars) if rng.random() < 0.3}
    notes = []
    for b in range(bars):
        if b in empty:
            continue
        for _ in range(rng.randint(1, 6)):
            onset = b * bar + rng.randrange(per_bar) * step
            notes.append(Note(onset, rng.choice([0.25, 0.5, 1.0, 3.0]), rng.randint(40, 90),
                              rng.randint(30, 120), rng.choice(ROLES)))
    start = (bars + rng.randint(0, 2)) * bar + rng.choice([0.0, step, bar / 2])
    return GenerateRequest(seed=tuple(notes), start_beat=start, bars=rng.randint(1, 2),
                           time_signature=signature, style=rng.choice(["romantic", "other"]))


def _from_bar(request: GenerateRequest, first_bar: int, tokenizer: MelodyTokenizer):
    """The request with only the seed notes of bars ``first_bar`` on (on the grid)."""
    bar = _bar_length(request.time_signature)
    kept = tuple(n for n in request.seed if n.onset >= first_bar * bar - 1e-9)
    return GenerateRequest(seed=kept, start_beat=request.start_beat, bars=request.bars,
                           time_signature=request.time_signature, style=request.style)


def test_a_trimmed_prompt_is_the_prompt_of_the_trimmed_seed(tokenizer):
    vocab = VocabularyMasks.build(tokenizer)
    rng = random.Random(7)
    trimmed = repaired = 0
    for _ in range(150):
        request = _random_request(rng, tokenizer)
        full = build_prompt(tokenizer, vocab, request, max_tokens=100_000)
        budget = rng.randint(8, max(8, len(full.tokens)))
        prompt = build_prompt(tokenizer, vocab, request, max_tokens=budget)
        assert len(prompt.tokens) <= budget
        expected = build_prompt(tokenizer, vocab,
                                _from_bar(request, prompt.first_bar, tokenizer),
                                max_tokens=100_000)
        assert prompt.tokens == expected.tokens, [tokenizer.tokens[t] for t in prompt.tokens]
        assert (prompt.first_bar, prompt.start_bar, prompt.end_bar, prompt.seed_notes) == (
            expected.first_bar, expected.start_bar, expected.end_bar, expected.seed_notes)
        assert prompt.grammar.detok.skipped == 0
        assert (prompt.grammar.bar, prompt.grammar.position) == (
            expected.grammar.bar, expected.grammar.position)
        if prompt.first_bar > full.first_bar:
            trimmed += 1
            # The cut is on the earliest bar that holds a note and fits, among the bars
            # that are multiples of CUT_STEP_BARS if one of those fits: the seed from
            # any earlier such bar does not fit.
            bar = _bar_length(request.time_signature)
            noted = {int(n.onset // bar) for n in request.seed
                     if full.first_bar <= n.onset // bar}
            aligned = prompt.first_bar % CUT_STEP_BARS == 0
            if not aligned:
                assert not [b for b in noted if b > prompt.first_bar
                            and b % CUT_STEP_BARS == 0 and b < full.start_bar + full.first_bar]
            earlier = {b for b in noted if b < prompt.first_bar
                       and (not aligned or b % CUT_STEP_BARS == 0)}
            if earlier:
                longer = build_prompt(tokenizer, vocab, _from_bar(request, max(earlier),
                                                                  tokenizer), 100_000)
                assert len(longer.tokens) > budget
            # Where the cut left a first note without its Role, one was written back:
            # the rest is then no longer a slice of the untrimmed prompt.
            body = prompt.tokens[2:]
            if tokenizer.has_roles and body != full.tokens[len(full.tokens) - len(body):]:
                repaired += 1
    assert trimmed > 30
    if tokenizer.has_roles:
        assert repaired > 5, "no cut needed a Role token written back"


def test_a_cut_names_the_role_of_the_first_note_kept():
    tokenizer = MelodyTokenizer(TokensSettings(style_slots=2, styles=("romantic",),
                                               roles=True))
    vocab = VocabularyMasks.build(tokenizer)
    seed = tuple(Note(4.0 * b, 1.0, 60 + b, 80, "lead") for b in range(20))
    request = GenerateRequest(seed=seed, start_beat=80.0, bars=1, style="romantic")
    prompt = build_prompt(tokenizer, vocab, request, max_tokens=30)
    texts = [tokenizer.tokens[t] for t in prompt.tokens]
    assert prompt.first_bar > 0
    assert texts[:5] == ["BOS_None", "Style_1", "Bar_None", "TimeSig_4/4", "Position_0"]
    assert texts[5] == "Role_lead"
    assert texts.count("Role_lead") == 1


def test_the_seed_is_encoded_once_even_when_it_is_trimmed(tokenizer, monkeypatch):
    vocab = VocabularyMasks.build(tokenizer)
    calls = []
    encode = tokenizer.encode_notes

    def counting(*args, **kwargs):
        calls.append(len(args[0]))
        return encode(*args, **kwargs)

    monkeypatch.setattr(tokenizer, "encode_notes", counting)
    # 400 notes, one per sixteenth over 25 bars: far more than 300 tokens.
    seed = tuple(Note(0.25 * i, 0.25, 50 + i % 20, 70) for i in range(400))
    request = GenerateRequest(seed=seed, start_beat=100.0, bars=1)
    prompt = build_prompt(tokenizer, vocab, request, max_tokens=300)
    assert prompt.first_bar > 0 and len(prompt.tokens) <= 300
    assert len(calls) == 1


def test_a_start_that_cannot_fit_is_refused(tokenizer):
    from models.core.exceptions import EngineError  # noqa: PLC0415

    vocab = VocabularyMasks.build(tokenizer)
    request = GenerateRequest(seed=(Note(0.0, 1.0, 60, 80),), start_beat=4.0, bars=1)
    with pytest.raises(EngineError, match="budget"):
        build_prompt(tokenizer, vocab, request, max_tokens=3)
