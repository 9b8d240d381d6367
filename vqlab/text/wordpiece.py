"""BERT WordPiece tokenization in pure python, as HF's BertTokenizer(Fast).

Steps, for one text (the same as `transformers.BertTokenizer` and the
`tokenizers` BertNormalizer + BertPreTokenizer + WordPiece pipeline):

1. Special tokens written literally in the text ("[SEP]", "[MASK]", ...,
   case-sensitive) are split off and kept whole.
2. Clean: drop NUL, U+FFFD and control characters (categories Cc, Cf, Co,
   Cs, but not tab/newline/CR); map whitespace to a space.
3. Put spaces around CJK ideographs, so each is a word.
4. Split on whitespace; for an uncased vocab strip accents (NFD, drop the
   nonspacing marks, category Mn) and lowercase each word; split each word
   into runs of non-punctuation and single punctuation characters (ASCII
   symbols such as `$`, `+`, `^` count as punctuation, like in BERT).
5. WordPiece: each word becomes the greedy longest-match-first sequence of
   vocab pieces, pieces after the first prefixed with '##'; a word with no
   such split, or longer than 100 characters, becomes [UNK].

`encode` adds [CLS] ... [SEP], truncates to `max_length` and pads with
[PAD] (id 0).

Where transformers' old python BertTokenizer and the Rust BertTokenizerFast
differ (rare characters: see `_is_control`, `_is_cjk`, the lowercasing),
this follows the fast one, which sentence-transformers uses. Character
categories come from Python's `unicodedata` (Unicode 14 on Python 3.11);
the `tokenizers` library's tables are older, so about 500 code points
assigned or recategorized since (rare Arabic marks and punctuation, e.g.
U+061D) tokenize differently there.
"""

from collections.abc import Sequence
import json
import os
import pathlib
import unicodedata

import numpy as np

from vqlab.text import padded_batch
from vqlab.text.special_tokens import split_special

SPECIAL_TOKENS = ('[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]')


def _is_whitespace(char: str) -> bool:
  if char in ' \t\n\r':
    return True
  return unicodedata.category(char) == 'Zs'


def _is_control(char: str) -> bool:
  """Control, format, private-use or surrogate, as the fast tokenizer
  finds (transformers' old python tokenizer had Cc/Cf only; unassigned code
  points are kept by both)."""
  if char in '\t\n\r':
    return False
  return unicodedata.category(char) in ('Cc', 'Cf', 'Co', 'Cs')


def _is_punctuation(char: str) -> bool:
  cp = ord(char)
  # All non-letter/number ASCII is punctuation for BERT, e.g. '$', '^', '`'.
  if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
    return True
  return unicodedata.category(char).startswith('P')


def _is_cjk(cp: int) -> bool:
  """CJK Unified Ideographs blocks (not Hangul, Hiragana or Katakana).

  The ranges of the fast tokenizer, which starts the Extension E/F range at
  U+2B920 where transformers' python one has U+2B820.
  """
  return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or
          0x20000 <= cp <= 0x2A6DF or 0x2A700 <= cp <= 0x2B73F or
          0x2B740 <= cp <= 0x2B81F or 0x2B920 <= cp <= 0x2CEAF or
          0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F)


def _strip_accents(text: str) -> str:
  return ''.join(c for c in unicodedata.normalize('NFD', text)
                 if unicodedata.category(c) != 'Mn')


def _split_punctuation(word: str) -> list[str]:
  out, current = [], []
  for char in word:
    if _is_punctuation(char):
      if current:
        out.append(''.join(current))
        current = []
      out.append(char)
    else:
      current.append(char)
  if current:
    out.append(''.join(current))
  return out


class WordPieceTokenizer:
  """BERT tokenizer: text -> word pieces -> ids.

  Attributes:
    vocab: {piece: id}.
    do_lower_case: lowercase words (uncased vocabs).
    strip_accents: strip accents; None follows do_lower_case (as in HF).
    tokenize_chinese_chars: make each CJK ideograph a word.
    max_input_chars_per_word: longer words become [UNK].
  """

  def __init__(self, vocab: dict[str, int], *, do_lower_case: bool = True,
               strip_accents: bool | None = None,
               tokenize_chinese_chars: bool = True,
               max_input_chars_per_word: int = 100):
    missing = [t for t in SPECIAL_TOKENS if t not in vocab]
    if missing:
      raise ValueError(f'the vocab lacks the special tokens {missing}')
    self.vocab = dict(vocab)
    self.inverse = {i: t for t, i in self.vocab.items()}
    self.do_lower_case = do_lower_case
    self.strip_accents = (do_lower_case
                          if strip_accents is None else strip_accents)
    self.tokenize_chinese_chars = tokenize_chinese_chars
    self.max_input_chars_per_word = max_input_chars_per_word
    self.pad_id = self.vocab['[PAD]']
    self.unk_id = self.vocab['[UNK]']
    self.cls_id = self.vocab['[CLS]']
    self.sep_id = self.vocab['[SEP]']

  @classmethod
  def from_dir(cls, directory: str | os.PathLike) -> 'WordPieceTokenizer':
    """Reads `vocab.txt` (one piece a line, id = line number) and, if
    present, the casing options of `tokenizer_config.json`."""
    directory = pathlib.Path(directory)
    with open(directory / 'vocab.txt', encoding='utf-8') as f:
      vocab = {}
      for index, line in enumerate(f):
        vocab[line.rstrip('\n')] = index
    options = {}
    config_path = directory / 'tokenizer_config.json'
    if config_path.is_file():
      config = json.loads(config_path.read_text(encoding='utf-8'))
      options['do_lower_case'] = bool(config.get('do_lower_case', True))
      options['strip_accents'] = config.get('strip_accents')
      options['tokenize_chinese_chars'] = bool(
          config.get('tokenize_chinese_chars', True))
    return cls(vocab, **options)

  # ------------------------------------------------------------ pieces ---

  def _basic_words(self, text: str) -> list[str]:
    """Steps 2-4 of the module docstring: text -> words."""
    chars = []
    for char in text:
      cp = ord(char)
      if cp == 0 or cp == 0xFFFD or _is_control(char):
        continue
      if _is_whitespace(char):
        chars.append(' ')
      elif self.tokenize_chinese_chars and _is_cjk(cp):
        chars.extend((' ', char, ' '))
      else:
        chars.append(char)
    # As the fast tokenizer (BertNormalizer): no NFC; strip accents, then
    # lowercase character by character (so a final capital sigma becomes
    # 'σ', not the contextual 'ς' of str.lower()).
    words = []
    for word in ''.join(chars).split():
      if self.strip_accents:
        word = _strip_accents(word)
      if self.do_lower_case:
        word = ''.join(c.lower() for c in word)
      words.extend(_split_punctuation(word))
    return words

  def _wordpiece(self, word: str) -> list[str]:
    """Step 5: greedy longest-match-first split of one word."""
    if len(word) > self.max_input_chars_per_word:
      return ['[UNK]']
    pieces = []
    start = 0
    while start < len(word):
      end = len(word)
      piece = None
      while start < end:
        candidate = word[start:end]
        if start > 0:
          candidate = '##' + candidate
        if candidate in self.vocab:
          piece = candidate
          break
        end -= 1
      if piece is None:
        return ['[UNK]']
      pieces.append(piece)
      start = end
    return pieces

  def tokenize(self, text: str) -> list[str]:
    """One text -> word pieces (no [CLS]/[SEP])."""
    pieces = []
    for chunk, special in split_special(text, SPECIAL_TOKENS):
      if special:
        pieces.append(chunk)
        continue
      for word in self._basic_words(chunk):
        pieces.extend(self._wordpiece(word))
    return pieces

  def convert_tokens_to_ids(self, tokens: Sequence[str]) -> list[int]:
    return [self.vocab.get(t, self.unk_id) for t in tokens]

  def convert_ids_to_tokens(self, ids: Sequence[int]) -> list[str]:
    return [self.inverse[int(i)] for i in ids]

  # ------------------------------------------------------------ encode ---

  def encode_one(self, text: str, max_length: int = 256) -> list[int]:
    """[CLS] pieces [SEP] as ids, pieces truncated to max_length - 2."""
    if max_length < 2:
      raise ValueError(f'max_length must be >= 2, got {max_length}')
    ids = self.convert_tokens_to_ids(self.tokenize(text))
    return [self.cls_id] + ids[:max_length - 2] + [self.sep_id]

  def encode(self, texts: str | Sequence[str], max_length: int = 256,
             pad_to: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Texts -> (ids int32 [B, L], mask bool [B, L]).

    Each row is [CLS] pieces [SEP] (pieces truncated so the row holds at
    most `max_length` ids), then [PAD] (id 0) with mask False.

    Args:
      texts: a string or a sequence of B strings.
      max_length: the most ids a row keeps, [CLS] and [SEP] included (256 for
        all-MiniLM-L6-v2, as sentence-transformers truncates).
      pad_to: L, a fixed width (rows are truncated to min(max_length,
        pad_to)); None: L is the longest row (a fixed width avoids
        recompiling a jitted encoder for each batch).
    """
    return padded_batch.encode_padded(self.encode_one, texts, max_length,
                                      pad_to, self.pad_id)
