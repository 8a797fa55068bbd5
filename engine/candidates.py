"""Best-of-N: a bar decoded as N candidates in one batch, the critic keeps one.

At the start of each bar of an answer a generation forks into N candidates (copies of its
state; the first takes its own cache row, the others copy the shared prefix into rows of
their own), which advance together in the decoder's batched calls until each has sampled
the ``Bar`` that ends the bar (or ended). The critic (``engine.critic``) scores each
candidate's bar against the call; the generation continues from the winner (its row,
stream and state) and streams the winner's notes, and the other rows are released.

How many candidates a bar gets shrinks with the time left before the bar must be out
(``candidates.ready_ms`` and ``bpm``), from the measured cost of a step at each batch
size, so a bar is never late for its candidates; with one candidate nothing is forked and
the generation streams each note as it is sampled, token for token as without best-of-N.
The estimate can be wrong (a dense call answered densely takes twice the tokens of the
bars before it), so a bar still undecided when ``CUT_MARGIN_STEPS`` more steps would pass
its deadline is decided then among the candidates that finished it, or continued by the
one furthest into the bar alone (``BestOfN.cut_if_late``): the estimate saves work, the
cut keeps the time.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence

from engine.cache import KVPool
from engine.critic import BarCandidate, CallProfile, CriticWeights, best
from engine.generation import Generation

# A bar is cut this many steps before its deadline: a step can take longer than its
# average (another process on the core), and the notes leave after the step that cut.
CUT_MARGIN_STEPS = 3


def bar_entry(gen: Generation) -> tuple[float, float]:
    """The bar line of the bar ``gen`` is in, and the beat the answer enters that bar (its
    start, for an answer starting mid-bar; the line otherwise)."""
    detok = gen.grammar.detok
    line = detok.bar_start + detok.offset
    return line, max(gen.request.start_beat, line)


class BestOfN:
    """Forks, times and resolves the candidates of one decoder's generations.

    Attributes:
        pool: the decoder's key/value rows (candidates take rows of their own).
        weights: the critic's weights.
        step_seconds: measured seconds of a step by rows (moving averages).
        bar_tokens: the tokens a bar takes (a moving average of the most of a bar's
            candidates).
        cuts: bars decided at their deadline before every candidate finished.
        clock: seconds on ``time.perf_counter``'s scale (the generations' own clock;
            tests move it).
    """

    def __init__(self, pool: KVPool,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.pool = pool
        self.clock = clock
        self.weights = CriticWeights()
        self.step_seconds: dict[int, float] = {}
        self.bar_tokens = 32.0
        self.cuts = 0

    def step_cost(self, rows: int) -> float:
        """Estimated seconds of one step of ``rows`` rows, from the steps measured so far.

        An unmeasured batch size is scaled linearly from the nearest smaller one measured
        (a batched call costs less than that, so the estimate errs on the safe side), or
        taken from the nearest larger one; with nothing measured yet, 5 ms a row.
        """
        known = self.step_seconds
        if rows in known:
            return known[rows]
        smaller = [k for k in known if k < rows]
        if smaller:
            k = max(smaller)
            return known[k] * rows / k
        larger = [k for k in known if k > rows]
        return known[min(larger)] if larger else 0.005 * rows

    def observe(self, rows: int, seconds: float) -> None:
        """Fold one step's measured time into the cost of its batch size."""
        old = self.step_seconds.get(rows)
        self.step_seconds[rows] = seconds if old is None else 0.8 * old + 0.2 * seconds

    def deadline(self, gen: Generation) -> float | None:
        """When (``time.perf_counter`` seconds) the bar ``gen`` is in must be decided:
        ``candidates.ready_ms`` after the request for its first bar, a bar's time later
        for each later one; ``None`` without a tempo and a ``ready_ms`` (offline)."""
        wanted = gen.request.candidates
        if wanted.bpm is None or wanted.ready_ms is None:
            return None
        _, entry = bar_entry(gen)
        return (gen._started + wanted.ready_ms / 1000.0
                + (entry - gen.request.start_beat) * 60.0 / wanted.bpm)

    def candidates_for(self, gen: Generation, other_rows: int = 0) -> int:
        """How many candidates the bar that ``gen`` starts now gets.

        The request's ``candidates.n``, less while ``bar_tokens`` steps of that many rows
        (plus ``other_rows`` of other generations) would not end before the bar's
        deadline (a morph's candidates take two rows each); 1 for a generation with a forced
        lead line.
        """
        wanted = gen.request.candidates
        if wanted.n <= 1 or gen.forcing is not None:
            return 1
        deadline = self.deadline(gen)
        if deadline is None:
            return wanted.n
        length = gen.request.bar_length
        line, entry = bar_entry(gen)
        left = deadline - self.clock()
        # A bar entered mid-way (the answer's first) takes about its share of the tokens.
        share = min(1.0, max(0.0, line + length - entry) / length)
        tokens = max(1.0, self.bar_tokens * share)
        rows_each = 2 if gen.twin is not None else 1
        for n in range(wanted.n, 1, -1):
            # The bar must end before the cut's margin does, or it would be cut even when
            # the estimate was right.
            if (tokens + CUT_MARGIN_STEPS) * self.step_cost(n * rows_each + other_rows) <= left:
                return n
        return 1

    def fork_where_due(self, active: Sequence[Generation]) -> None:
        """Fork every generation that starts a bar now into its candidates."""
        due = [g for g in active if g.branches is None and g.at_bar_start
               and g.request.candidates.n > 1 and not g.prefill_rest]
        if not due:
            return
        total = sum((1 if g.branches is None else len(g.branches))
                    * (2 if g.twin is not None or (g.branches and g.branches[0].twin) else 1)
                    for g in active)
        for gen in due:
            own = 2 if gen.twin is not None else 1
            n = self.candidates_for(gen, other_rows=total - own)
            if n > 1:
                self.fork(gen, n)
                total += (n - 1) * own

    def fork(self, gen: Generation, n: int) -> None:
        """Split a generation at a bar start into ``n`` candidates of that bar.

        The first candidate takes the generation's row and its random generator (so it
        draws what one candidate would), the others copy the row's prefix and draw from
        generators spawned from it (reproducible with a seeded request).
        """
        assert self.pool is not None and gen.slot is not None
        if gen.call is None:
            gen.call = CallProfile.of(gen.request)
        rngs = [gen.rng, *gen.rng.spawn(n - 1)]
        gen._held, gen._notes = gen._notes, []
        gen._fork_tokens, gen._fork_log_prob = gen.tokens, gen.log_prob
        branches = []
        for index in range(n):
            branch = copy.copy(gen)
            branch.is_branch = True
            branch.parked = False
            branch.branches = None
            branch.grammar = gen.grammar.fork()
            branch.density = copy.copy(gen.density)
            branch.stream = list(gen.stream)
            branch._notes = []
            branch.rng = rngs[index]
            if index:
                branch.slot = self.pool.acquire()
                self.pool.copy_row(gen.slot, branch.slot)
                if gen.twin is not None:  # a morph: each candidate reads into its own twin
                    branch.twin = copy.copy(gen.twin)
                    branch.twin.stream = list(gen.twin.stream)
                    branch.twin.slot = self.pool.acquire()
                    self.pool.copy_row(gen.twin.slot, branch.twin.slot)
            branches.append(branch)
        gen.bar_deadline = self.deadline(gen)
        gen.slot = None  # the first candidate holds it now (and the twin, with a morph)
        gen.twin = None
        gen.branches = branches

    def resolve(self, gen: Generation, among: Sequence[int] | None = None) -> None:
        """Keep the critic's choice of the candidates that finished their bar (``among``:
        these indices only, the others are dropped unfinished), drop the others."""
        branches = gen.branches
        assert branches is not None and gen.call is not None
        indices = list(range(len(branches))) if among is None else list(among)
        line, entry = bar_entry(gen)
        span = line + gen.request.bar_length - entry
        before = [*gen.played, *gen._held]
        candidates = [BarCandidate(branches[i]._notes, branches[i].log_prob - gen._fork_log_prob,
                                   branches[i].tokens - gen._fork_tokens, span, before)
                      for i in indices]
        pick, scores = best(candidates, gen.call, self.weights)
        self._learn_bar_tokens(gen)
        gen.choices.append((len(candidates), indices[pick], scores))
        self.adopt(gen, indices[pick])

    def cut_if_late(self, gen: Generation, rows: int) -> bool:
        """Decide a forked bar now if ``CUT_MARGIN_STEPS`` more steps of ``rows`` rows
        would end past its deadline, whatever the estimate that chose its N said.

        The critic chooses among the candidates that have finished the bar (or the
        answer); with none finished, the one whose notes reached furthest into the bar
        goes on alone and streams its notes from now on, as one candidate would have; a
        candidate that ended the answer early (EOS, the token limit) is chosen only when
        every one did. The bar's first notes are then out by the
        deadline even when the bar runs far longer than ``bar_tokens`` (a dense call
        answered densely). Returns whether the bar was cut.
        """
        branches = gen.branches
        deadline = gen.bar_deadline
        if branches is None or deadline is None:
            return False
        if self.clock() + CUT_MARGIN_STEPS * self.step_cost(rows) <= deadline:
            return False
        # Finished: parked on the bar's end, or done with the answer. One that ended the
        # answer early (EOS, the token limit) is left out while another goes on: the
        # cut must not end a whole answer on a partial bar the full choice would rank last.
        finished = [i for i, b in enumerate(branches)
                    if b.parked or (b.done and b.reason == "complete")]
        going = [i for i, b in enumerate(branches) if not b.done and not b.parked]
        if finished:
            self.resolve(gen, among=finished)
        elif going:
            # The candidates step together, so each has sampled as many tokens; the one
            # whose notes reached furthest into the bar has the least left to decode.
            furthest = max(going, key=lambda i: branches[i].grammar.detok.time)
            self._learn_bar_tokens(gen)
            gen.choices.append((1, furthest, []))
            self.adopt(gen, furthest)
        else:
            self.resolve(gen)  # every candidate ended early: the critic's choice of them
        self.cuts += 1
        return True

    def _learn_bar_tokens(self, gen: Generation) -> None:
        """Fold the most tokens of the bar's candidates (finished or not: a lower bound
        for an unfinished one) into ``bar_tokens``."""
        assert gen.branches is not None
        longest = max(b.tokens for b in gen.branches) - gen._fork_tokens
        self.bar_tokens = 0.7 * self.bar_tokens + 0.3 * max(longest, 1)

    def adopt(self, gen: Generation, winner: int) -> None:
        """Continue ``gen`` from one of its candidates; release the others' rows."""
        branches = gen.branches
        assert branches is not None and self.pool is not None
        chosen = branches[winner]
        for index, branch in enumerate(branches):
            if index != winner and branch.slot is not None:
                self.pool.release(branch.slot)
            if index != winner and branch.twin is not None and branch.twin.slot is not None:
                self.pool.release(branch.twin.slot)
        for name in ("grammar", "density", "rng", "stream", "slot", "twin", "cache_len",
                     "next_position", "slid", "logits", "pending", "tokens", "log_prob",
                     "notes_emitted", "at_bar_start"):
            setattr(gen, name, getattr(chosen, name))
        gen._notes = gen._held + chosen._notes
        gen._held = []
        gen.branches = None
        if chosen.done:
            gen._finish(chosen.reason or "complete")
