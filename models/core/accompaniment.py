"""The rules of an accompaniment under a lead: seed roles, limits and steering.

One place for what accompany mode (``bridge``) and ``melody harmonize`` (offline) both ask
of a model with role tokens: the player's or the file's melody is the ``lead``, what
melodyd played is ``accompaniment``, and a request asks for accompaniment only, below
the lead (so it does not double it), with a cap on the notes sounding at once, and with
the steering bent from "like the call" to "under the lead".

Torch-free.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from models.core.notes import ACCOMPANIMENT, LEAD, Note
from models.core.protocol.messages import Constraints, Steering
from models.core.settings import InteractionSettings

# The lowest ceiling "below the lead" may impose: at least this many semitones above the
# range's floor stay open, else the ceiling is not applied (a lead in the bass).
MIN_ROOM = 12


def with_roles(lead: Sequence[Note], accompaniment: Sequence[Note]) -> list[Note]:
    """One seed, by onset: the lead's notes as ``lead``, melodyd's as ``accompaniment``."""
    notes = [dataclasses.replace(n, role=LEAD) for n in lead]
    notes += [dataclasses.replace(n, role=ACCOMPANIMENT) for n in accompaniment]
    notes.sort(key=lambda n: (n.onset, n.pitch))
    return notes


def accompaniment_constraints(base: Constraints, recent_lead: Sequence[Note],
                              settings: InteractionSettings) -> Constraints:
    """``base`` narrowed for an accompaniment under ``recent_lead`` (the lead notes it knows).

    The role is ``accompaniment``; with ``accompany_below_lead`` the ceiling is one
    semitone under the lead's lowest recent note (unless that leaves under ``MIN_ROOM``
    semitones); ``accompany_polyphony`` caps the notes sounding at once.
    """
    ceiling = base.pitch_max
    if settings.accompany_below_lead and recent_lead:
        below = min(n.pitch for n in recent_lead) - 1
        if below - base.pitch_min >= MIN_ROOM:
            ceiling = min(ceiling, below)
    polyphony = base.max_polyphony
    if settings.accompany_polyphony:
        polyphony = min(polyphony or settings.accompany_polyphony,
                        settings.accompany_polyphony)
    return dataclasses.replace(base, pitch_max=ceiling, max_polyphony=polyphony,
                               role=ACCOMPANIMENT)


def accompaniment_steering(heard: Steering, settings: InteractionSettings) -> Steering:
    """The steering heard in the lead, bent for what goes under it.

    The key bias is ``accompany_key_strength`` (not the answers' ``key_strength``): the
    key profile leans towards the tonic chord, and under a melody that froze the
    accompaniment on one chord for whole phrases (docs/accompany.md), so by default the
    model keeps its own harmony. No register bias: the ceiling under the lead is the
    limit, and below it the model places its bass and chords as it learnt. The notes per
    bar become ``accompany_density`` times the lead's.
    """
    return dataclasses.replace(
        heard,
        key_strength=settings.accompany_key_strength if heard.key is not None else 0.0,
        register_center=None, register_strength=0.0,
        notes_per_bar=(None if heard.notes_per_bar is None
                       else heard.notes_per_bar * settings.accompany_density))
