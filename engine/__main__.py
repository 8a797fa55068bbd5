"""``python -m engine``: run the engine service (what the bridge daemon starts as a child)."""

import sys

from engine.server_cli import main

sys.exit(main())
