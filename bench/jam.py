"""The jam harness as a benchmark script: the same as ``melody jam-eval``.

Plays scripted calls (C major, other keys, 3/4 and 6/8, 70-160 BPM, sparse and dense,
held-out openings of real music) through melodyd's seed window, call-and-response policy
and request building on a simulated clock, answers them with the real engine in process,
and scores each answer (key agreement, density ratio, register, rhythm, near-silence,
style verdict, log-likelihood, lead time of the first note). See ``engine.tools.jam``.

Run: ``python bench/jam.py --repeats 3 --json runs/jam.json`` (``--help`` for the rest).
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this folder comes first on the path, and its engine.py (the engine
# benchmark) would hide the engine package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from engine.tools.jam_cli import main  # noqa: E402 - after the path fix above

if __name__ == "__main__":
    sys.exit(main())
