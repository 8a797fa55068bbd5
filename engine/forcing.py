"""Writing a known lead line into a stream while the model writes what accompanies it.

Offline harmonization knows the melody of the bar being accompanied. A REMI stream is in
time order, and at one position a lead note comes before what accompanies it (the
tokenizer's role order), so the lead cannot simply go into the prompt: it has to be
*interleaved*. :class:`LeadForcing` does it token by token on top of the grammar:

- when the stream stands at a lead note's position, the note's tokens (``Role_lead`` if
  another role is in force, ``Pitch``, ``Velocity``, ``Duration``) are fed before the model
  may write anything there;
- when the model samples a token that would move time past the next lead note (a later
  ``Position``, a ``Bar``, ``EOS``), that token is dropped and the lead note is written at
  its own ``Position`` instead; the model then continues from there.

The model still runs on every forced token (its cache must hold them), but forced notes
are the caller's, not the answer: the decoder does not return them. The role constraint
of the request (``accompaniment``) applies to what the model samples; forced tokens are
fed to the grammar directly, which accepts any decodable stream.

Written by hand: no library interleaves given events into a sampled REMI stream.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

import numpy as np

from engine.grammar import Grammar, VocabularyMasks
from models.core.notes import LEAD, Note
from models.core.streaming import Expect

# Onsets are compared on the beat grid; this absorbs float rounding.
_EPS = 1e-6


class LeadForcing:
    """The lead notes still to write into one stream, and the tokens of the one being written.

    Attributes:
        pending: lead notes not yet written, by onset then pitch (caller's timeline).
        written: how many lead notes were written so far.
        dropped: lead notes that could not be written (they start before the stream's
            current time, e.g. before the generation's first bar).
    """

    def __init__(self, lead: Sequence[Note], vocab: VocabularyMasks) -> None:
        self.vocab = vocab
        self.pending: deque[Note] = deque(sorted(lead, key=lambda n: (n.onset, n.pitch)))
        self.written = 0
        self.dropped = 0
        self._queue: deque[int] = deque()
        kinds = vocab.kind
        self._velocity_ids = np.flatnonzero(kinds["Velocity"])
        self._velocity_values = np.array([vocab.infos[i].value for i in self._velocity_ids])
        self._duration_ids = np.flatnonzero(kinds["Duration"])
        self._duration_beats = np.array([vocab.infos[i].beats for i in self._duration_ids])
        self._position_ids = {vocab.infos[i].value: int(i)
                              for i in np.flatnonzero(kinds["Position"])}
        self._pitch_ids = {int(vocab.pitch[i]): int(i) for i in np.flatnonzero(kinds["Pitch"])}

    @property
    def done(self) -> bool:
        """Whether every lead note is written."""
        return not self.pending and not self._queue

    def next_forced(self, grammar: Grammar) -> int | None:
        """The token to feed now instead of sampling, or ``None`` to let the model sample."""
        if self._queue:
            return self._queue.popleft()
        self._drop_past(grammar)
        if not self.pending or not self._at_note_start(grammar):
            return None
        if abs(self.pending[0].onset - self._now(grammar)) > _EPS:
            return None
        self._queue_note(grammar, with_position=False)
        return self._queue.popleft()

    def intercept(self, grammar: Grammar, token: int) -> int:
        """``token`` if it keeps the next lead note reachable, else the first forced token.

        A ``Position`` beyond the next lead note's, a ``Bar`` while that note is still in
        the current bar, or ``EOS`` while lead notes remain would skip the lead: the lead
        note is written at its position instead (the sampled token is discarded).
        """
        self._drop_past(grammar)
        if not self.pending:
            return token
        info = self.vocab.infos[token]
        onset = self.pending[0].onset
        detok = grammar.detok
        bar_start = detok.bar_start + detok.offset
        if info.kind == "Position":
            when = bar_start + info.value * detok.beat_length / detok.positions_per_beat
            passes = onset < when - _EPS
        elif info.kind == "Bar":
            passes = onset < bar_start + detok.bar_length - _EPS and detok.bar >= 0
        elif info.kind == "EOS":
            passes = True
        else:
            return token
        if not passes or not self._in_current_bar(grammar, onset):
            return token
        self._queue_note(grammar, with_position=True)
        return self._queue.popleft()

    # ----------------------------------------------------------------- helpers
    @staticmethod
    def _now(grammar: Grammar) -> float:
        return grammar.detok.time + grammar.detok.offset

    @staticmethod
    def _at_note_start(grammar: Grammar) -> bool:
        """Whether a note may begin here: after a Position or a whole note of this bar."""
        detok = grammar.detok
        return (detok.expect is Expect.EVENT and detok.position >= 0
                and grammar._last_kind in ("Position", "Duration"))

    def _in_current_bar(self, grammar: Grammar, onset: float) -> bool:
        detok = grammar.detok
        start = detok.bar_start + detok.offset
        return detok.bar >= 0 and start - _EPS <= onset < start + detok.bar_length - _EPS

    def _drop_past(self, grammar: Grammar) -> None:
        """Forget lead notes the stream can no longer reach (they start before now)."""
        if grammar.detok.bar < 0:
            return
        now = self._now(grammar)
        while self.pending and self.pending[0].onset < now - _EPS:
            self.pending.popleft()
            self.dropped += 1

    def _queue_note(self, grammar: Grammar, *, with_position: bool) -> None:
        """Queue the tokens of every pending lead note at the next lead onset."""
        detok = grammar.detok
        onset = self.pending[0].onset
        if with_position:
            step = round((onset - detok.bar_start - detok.offset) / detok.beat_length
                         * detok.positions_per_beat)
            self._queue.append(self._position_ids[step])
        role_named = grammar._role_named and detok.role == LEAD
        # Every lead note at this onset, lowest first (the tokenizer's order by pitch).
        while self.pending and abs(self.pending[0].onset - onset) <= _EPS:
            note = self.pending.popleft()
            if note.pitch not in self._pitch_ids:
                self.dropped += 1
                continue
            if not role_named:
                self._queue.append(self.vocab.role[LEAD])
                role_named = True
            beats = note.duration / detok.beat_length
            self._queue.extend((
                self._pitch_ids[note.pitch],
                int(self._velocity_ids[np.argmin(np.abs(self._velocity_values
                                                        - note.velocity))]),
                int(self._duration_ids[np.argmin(np.abs(self._duration_beats - beats))])))
            self.written += 1
