"""Fixtures of the bridge tests; the JACK ones start a private JACK server."""

from __future__ import annotations

import sys
from pathlib import Path

# Test helpers live beside the tests; importlib mode does not put this folder on the path.
sys.path.insert(0, str(Path(__file__).parent))
