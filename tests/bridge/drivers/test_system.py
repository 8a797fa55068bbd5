"""Choosing the MIDI system and the driver (the JACK choices are in test_jack.py)."""

from __future__ import annotations

import pytest

from bridge.drivers.system import WINDOWS_NO_VIRTUAL, open_ports
from models.core.exceptions import BridgeError


def test_windows_needs_existing_ports():
    with pytest.raises(BridgeError, match="loopMIDI") as info:
        open_ports("windows", in_name="a", out_name="b", connect_in="", connect_out="",
                   callback=lambda m, t: None)
    assert str(info.value) == WINDOWS_NO_VIRTUAL
