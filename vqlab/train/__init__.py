"""The train loop and what it owns: mesh, checkpoints, writers, progress."""
