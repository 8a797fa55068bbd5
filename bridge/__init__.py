"""Bridge: MIDI ports, clock, seed window, scheduler and the melodyd daemon.

Never imports torch, onnxruntime, ``engine`` or ``export``: it talks to the engine over zmq.
"""
