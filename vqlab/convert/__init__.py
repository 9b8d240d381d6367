"""Converters of published tokenizer checkpoints into vqlab runs
(`python -m vqlab.convert`); the weight-file readers are in vqlab.weights."""
