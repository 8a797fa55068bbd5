"""The neutral primes of the style evaluation: what they are, in their keys and metres."""

from __future__ import annotations

import pytest

from models.analysis.primes import NEUTRAL_PRIMES, neutral_primes
from models.core.tonality import estimate_key


def test_the_neutral_primes_are_fur_elise_a_c_major_phrase_and_a_folk_tune() -> None:
    primes = neutral_primes()
    assert tuple(p.name for p in primes) == NEUTRAL_PRIMES
    fur_elise, c_major, folk = primes
    assert (fur_elise.time_signature, fur_elise.bars) == ((3, 8), 9)
    assert (c_major.time_signature, c_major.bars, c_major.length) == ((4, 4), 2, 8.0)
    assert (folk.time_signature, folk.bars, folk.length) == ((6, 8), 5, 15.0)
    for prime in primes:
        # Every note inside the prime, so the continuation starts after its last bar.
        assert prime.notes and all(n.onset >= 0 and n.end <= prime.length + 1e-9
                                   for n in prime.notes), prime.name


@pytest.mark.parametrize(("name", "tonic", "mode"), [
    ("fur_elise", 9, "minor"), ("c_major", 0, "major"), ("folk_tune", 4, "minor")])
def test_each_neutral_prime_is_heard_in_its_key(name: str, tonic: int, mode: str) -> None:
    prime = next(p for p in neutral_primes() if p.name == name)
    key = estimate_key(prime.notes)
    assert key is not None and (key.tonic, key.mode) == (tonic, mode)


def test_the_c_major_phrase_is_one_line_of_quarter_notes_ending_on_the_tonic() -> None:
    notes = neutral_primes()[1].notes
    assert [n.onset for n in notes] == [float(b) for b in range(8)]
    assert [n.pitch for n in notes] == [60, 62, 64, 65, 67, 64, 65, 60]


def test_the_folk_tune_starts_on_its_upbeat_and_fills_its_four_bars() -> None:
    folk = neutral_primes()[2]
    bar = folk.bar_length
    assert bar == 3.0
    upbeat = [n for n in folk.notes if n.onset < bar]
    assert [(n.onset, n.pitch) for n in upbeat] == [(2.5, 64)]  # the E before bar 1
    for number in range(1, 5):  # no gap in the tune: each bar's notes fill it
        inside = [n for n in folk.notes if number * bar <= n.onset < (number + 1) * bar]
        assert sum(n.duration for n in inside) == pytest.approx(bar), number
