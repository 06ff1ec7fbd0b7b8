"""Bundled demo models: ONNX files, model cards, the training script and the FLOP counter."""
