"""MIDI drivers behind one port interface (``bridge.drivers.base``).

- ``base``: ``InputPort``, ``OutputPort``, ``Ports``, the one ``InputCallback`` type.
- ``rtmidi``: python-rtmidi's ports (ALSA, JACK, CoreMIDI, Windows MIDI).
- ``jack``: melodyd's own JACK client (``bridge/native/jackmidi.c``) and its ports.
- ``system``: which MIDI system and which driver; ``open_ports`` for the daemon.

The package imports nothing itself, so the note guardian loads the JACK driver without
python-rtmidi.
"""
