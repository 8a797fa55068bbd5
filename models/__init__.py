"""PyTorch side of melodyd, and the torch-free core every part shares.

Importing this package imports nothing: the engine and the bridge use its torch-free
modules (settings, exceptions, notes, tokenizer, streaming) without pulling in torch.
"""
