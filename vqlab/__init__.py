"""vqlab: visual tokenizers and token generators in JAX/Flax."""

__version__ = '0.1.0'
