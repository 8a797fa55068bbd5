"""``python -m bench.engine [flags]``: the engine benchmark, as ``melody bench engine [flags]``.

The benchmark is part of the package: the engine's figures in ``engine/tools/bench.py``,
the comparisons that need torch or another environment in ``export/compare.py``, the
command in ``export/bench_cli.py``. This script only runs that command from a checkout.
"""

from __future__ import annotations

import sys

from export.bench_cli import main

if __name__ == "__main__":
    sys.exit(main())
