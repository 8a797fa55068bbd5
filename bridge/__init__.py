"""Bridge: MIDI ports, clock, seed window, scheduler and the melodyd daemon (no torch, no onnxruntime)."""
