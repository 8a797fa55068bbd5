"""models.core.chords: chord symbols and Harte labels as pitch classes, and chord loops
turned into a request's hints."""

from __future__ import annotations

import pytest

from models.core.chords import (
    chord_pitch_classes,
    loop_hints,
    parse_chord_loop,
    symbol_pitch_classes,
)
from models.core.protocol.messages import ChordHint


@pytest.mark.parametrize(("symbol", "classes"), [
    ("C", {0, 4, 7}), ("Am", {9, 0, 4}), ("G7", {7, 11, 2, 5}), ("Fmaj7", {5, 9, 0, 4}),
    ("Bbm7b5", {10, 1, 4, 8}), ("C/E", {0, 4, 7}), ("F/A", {5, 9, 0}), ("D/F#", {2, 6, 9}),
    ("C7/Bb", {0, 4, 7, 10}), ("Dsus4", {2, 7, 9}), ("Esus2", {4, 6, 11}), ("Bdim", {11, 2, 5}),
    ("Cdim7", {0, 3, 6, 9}), ("Caug", {0, 4, 8}), ("C6", {0, 4, 7, 9}), ("Ebm", {3, 6, 10}),
    ("C#m7", {1, 4, 8, 11}), ("G7sus4", {7, 0, 2, 5}), ("N", set()),
])
def test_chord_symbols_name_their_pitch_classes(symbol, classes):
    assert symbol_pitch_classes(symbol) == frozenset(classes)


@pytest.mark.parametrize("symbol", ["H", "Cx", "Am/H", "c", "C//E", "Cmaj13#11", ""])
def test_a_symbol_that_is_not_a_chord_is_refused_with_the_spelling(symbol):
    with pytest.raises(ValueError, match="not a chord symbol"):
        symbol_pitch_classes(symbol)


def test_harte_labels_and_symbols_share_one_table():
    assert chord_pitch_classes("A:min7") == symbol_pitch_classes("Am7")
    assert chord_pitch_classes("B:hdim7") == symbol_pitch_classes("Bm7b5")
    assert chord_pitch_classes("C:maj/3") == symbol_pitch_classes("C/E")


def test_a_loop_is_one_chord_a_bar_and_bar_lines_are_optional():
    assert parse_chord_loop("| Dm7 | G7 | Cmaj7 | N |") == parse_chord_loop("Dm7 G7 Cmaj7 N")
    assert len(parse_chord_loop("C G Am F")) == 4
    with pytest.raises(ValueError, match="at least one chord"):
        parse_chord_loop(" | ")


def test_loop_hints_take_the_chord_of_each_timeline_bar():
    loop = parse_chord_loop("C G Am F")
    # From the bar holding beat 22 (bar 5 of 4/4: G), two bars.
    assert loop_hints(loop, start_beat=22.0, bars=2, bar_length=4.0) == (
        ChordHint(20.0, (2, 7, 11)), ChordHint(24.0, (0, 4, 9)))
    # 3/4 bars from bar 0.
    assert [h.beat for h in loop_hints(loop, start_beat=0.0, bars=3, bar_length=3.0)] == [
        0.0, 3.0, 6.0]
    assert loop_hints((), start_beat=0.0, bars=2, bar_length=4.0) == ()
