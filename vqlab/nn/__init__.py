"""Layers shared by all models."""
