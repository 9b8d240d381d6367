"""Reconstruction, perceptual and adversarial losses."""
