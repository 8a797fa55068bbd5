"""Engine: ONNX Runtime decoding with a KV cache, sampling, the zmq service."""
