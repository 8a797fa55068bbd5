"""Soak benchmark of melodyd's reliability promises: every stop releases every note, a
downbeat start is always answered, no request can stall the engine, no file can poison a
dataset.

Not a unit test: it repeats what a musician and a hostile client do, hundreds of times,
on a private JACK server (dummy backend) and a real engine, and counts the failures.
Parts (``--parts``, all by default):

- ``stops``: melodyd answers a phrase; while the answer plays (after its first note-on
  reached the listener, plus a random 0-300 ms) it is stopped by SIGTERM or SIGINT, its
  engine child is SIGKILLed (then melodyd gets SIGTERM), or the JACK server is stopped.
  The listener (a probe client on ``melodyd out``) counts stuck notes (a note-on without
  its note-off, CC 123 not counted as one) and missing panics (CC 64 = 0 and CC 123
  after the kill), on each of melodyd's JACK clients (``[midi] jack_client``).
- ``downbeat``: ``melodyd --clock midi``; the probe presses Start and plays on "one": the
  note in the first tick's frame before the tick, after it, or between Start and the
  tick, as a phrase and as a single note. A miss is a start for which melodyd never
  requests an answer (its log line ``seed of N notes``) or logs ``engine error``.
- ``fuzz``: a standalone engine; one DEALER sends mutated hello/generate/cancel/ping/stats
  messages (wrong types, huge numbers, NaN, deep nesting, huge strings, far start_beat,
  long seeds, garbage bytes, wrong versions, ...), each followed by a ping, while a second
  DEALER (another process) pings every ``--ping-interval-ms`` and records the round trips.
  Counts ``internal`` replies, unanswered requests, hangs and crashes, and names the
  requests that held the engine longest.
- ``dataset``: the hostile folder of ``bench/hostile_folder.py`` (huge delta times, zero
  division, links in circles, FIFOs, odd suffixes, ...) plus a few entries of its own
  (names that are not UTF-8, a piece over a lowered ``max_tokens``, ...) through
  ``melody data build``: every entry kept or skipped with its expected reason, no kept
  piece above ``max_tokens``.

Prints a table and writes JSON. Quick check: ``python -m bench.soak --quick``; the
issue's targets are the defaults: ``python -m bench.soak``.

One module per part (``stops``, ``downbeat``, ``fuzz`` with its message generator
``fuzzer``, ``dataset``), the helpers they share (``common``), the table, verdict and
JSON (``report``) and the command line (``__main__``).
"""
