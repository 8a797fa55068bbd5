"""Bridge: MIDI drivers, clock, seed window, policy, scheduler, engine client, the daemon,
and the application (``bridge.app``) that starts and stops them.

Never imports torch, onnxruntime, ``engine`` or ``export``: it talks to the engine over zmq.
"""
