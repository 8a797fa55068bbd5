"""The ``melody`` command: melodyd's tools, found through the ``melody.commands`` entry points.

The dispatch itself is ``models.core.commands`` (shared with ``melodyd``): running one
command imports only that command's module.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from models.core.commands import dispatch


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``melody``."""
    return dispatch("melody", "melody.commands",
                    "melodyd's tools: build datasets, train, export, generate, evaluate.",
                    sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
