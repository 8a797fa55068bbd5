"""Export: checkpoints to self-describing ONNX models, verified against PyTorch."""
