r"""CLIP's byte-level BPE tokenizer in pure python, as HF's CLIPTokenizer.

Steps, for one text (the `tokenizers` pipeline that transformers'
CLIPTokenizer(Fast) builds from vocab.json + merges.txt):

1. Normalize: NFC, every run of whitespace becomes one space, lowercase
   (character by character, as the `tokenizers` Lowercase normalizer: a
   final capital sigma becomes 'σ'). `clean_text` can also html-unescape
   first, as OpenAI's SimpleTokenizer does (its ftfy step is not available
   here); HF's tokenizer does not unescape, so that is off by default.
2. The special tokens "<|startoftext|>" / "<|endoftext|>" written in the
   text are split off and kept whole (special ids). As `tokenizers` does,
   they are matched in the raw text (so case-sensitively), or after step 1
   when tokenizer.json marks them `normalized` (`normalized_specials`).
3. Pre-tokenize with CLIP's pattern

     <\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|
     [\p{N}]|[^\s\p{L}\p{N}]+

   (whitespace between the matches is dropped). Python's `re` has no \p{..}
   classes and the `regex` package is not a dependency, so `_pre_tokenize`
   scans with unicodedata categories (L* letters, N* numbers) instead.
   The ByteLevel pre-tokenizer that follows re-splits with GPT-2's pattern,
   which changes only a special token's text matched here (e.g. written in
   capitals: not split off in step 2): '<|', 'endoftext', '|>'.
4. Each word's UTF-8 bytes become printable characters (GPT-2's
   `bytes_to_unicode`), the last one carrying the end-of-word suffix
   '</w>'; BPE merges then join adjacent symbols, lowest merge rank first.
   A symbol not in the vocab becomes the unknown token (<|endoftext|>).

`encode` adds <|startoftext|> ... <|endoftext|>, truncates (keeping the end
token), and pads with the pad token (HF: tokenizer_config's `pad_token`,
<|endoftext|> for OpenAI's CLIP; some models pad with "!"), mask False.
"""

from collections.abc import Sequence
import functools
import html
import json
import os
import pathlib
import unicodedata

import numpy as np

from vqlab.text import padded_batch
from vqlab.text.special_tokens import split_special

BOS = '<|startoftext|>'
EOS = '<|endoftext|>'
END_OF_WORD = '</w>'
# Whitespace as the Rust regex engines of `tokenizers` see \s (the Unicode
# White_Space property; unlike str.isspace, not the separators \x1c-\x1f).
_WHITESPACE = frozenset(
    '\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005'
    '\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000')
_CONTRACTIONS = ("'s", "'t", "'re", "'ve", "'m", "'ll", "'d")


@functools.lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
  """GPT-2's map of the 256 byte values to printable characters: printable
  Latin-1 bytes map to themselves, the others to U+0100 onwards."""
  keep = (list(range(ord('!'),
                     ord('~') + 1)) + list(range(ord('¡'),
                                                 ord('¬') + 1)) +
          list(range(ord('®'),
                     ord('ÿ') + 1)))
  mapping = {b: chr(b) for b in keep}
  extra = 0
  for b in range(256):
    if b not in mapping:
      mapping[b] = chr(256 + extra)
      extra += 1
  return mapping


def _is_letter(char: str) -> bool:
  return unicodedata.category(char).startswith('L')


def _is_number(char: str) -> bool:
  return unicodedata.category(char).startswith('N')


def clean_text(text: str, html_unescape: bool = False) -> str:
  """Step 1: (optionally html-unescape twice, as SimpleTokenizer,) NFC,
  whitespace runs -> ' ', lowercase."""
  if html_unescape:
    text = html.unescape(html.unescape(text))
  text = unicodedata.normalize('NFC', text)
  out = []
  in_space = False
  for char in text:
    if char in _WHITESPACE:
      if not in_space:
        out.append(' ')
      in_space = True
    else:
      out.append(char)
      in_space = False
  return ''.join(c.lower() for c in ''.join(out))


def _pre_tokenize(text: str) -> list[str]:
  """Step 3: CLIP's regex matches, leftmost alternative first."""
  words = []
  i, n = 0, len(text)
  while i < n:
    char = text[i]
    if char in _WHITESPACE:
      i += 1
      continue
    special = next((s for s in (BOS, EOS) if text.startswith(s, i)), None)
    if special is not None:  # Re-split by ByteLevel's GPT-2 pattern.
      words.extend(('<|', special[2:-2], '|>'))
      i += len(special)
      continue
    if char == "'":
      contraction = next((c for c in _CONTRACTIONS if text.startswith(c, i)),
                         None)
      if contraction is not None:
        words.append(contraction)
        i += len(contraction)
        continue
    if _is_letter(char):
      j = i + 1
      while j < n and _is_letter(text[j]):
        j += 1
    elif _is_number(char):
      j = i + 1
    else:
      j = i + 1
      while (j < n and text[j] not in _WHITESPACE and
             not _is_letter(text[j]) and not _is_number(text[j])):
        j += 1
    words.append(text[i:j])
    i = j
  return words


def _read_special(config: dict, name: str, default: str | None) -> str | None:
  value = config.get(name, default)
  if isinstance(value, dict):  # An AddedToken: {"content": ..., ...}.
    value = value.get('content', default)
  return value


class ClipTokenizer:
  """CLIP BPE tokenizer: text -> byte-level BPE pieces -> ids.

  Attributes:
    vocab: {piece: id} (vocab.json).
    ranks: {(left, right): rank} of the merges (merges.txt order).
    bos_id, eos_id, pad_id, unk_id: the special ids.
    model_max_length: the default truncation length (77).
    html_unescape: html-unescape texts first (SimpleTokenizer; not HF).
    normalized_specials: match special tokens written in the text after
      normalization (lowercasing), not in the raw text.
  """

  def __init__(self, vocab: dict[str, int], merges: Sequence[tuple[str, str]],
               *, bos_token: str = BOS, eos_token: str = EOS,
               pad_token: str | None = EOS, unk_token: str = EOS,
               model_max_length: int = 77, html_unescape: bool = False,
               normalized_specials: bool = False):
    missing = [
        t for t in (bos_token, eos_token, unk_token, pad_token)
        if t is not None and t not in vocab
    ]
    if missing:
      raise ValueError(f'the vocab lacks the special tokens {missing}')
    self.vocab = dict(vocab)
    self.inverse = {i: t for t, i in self.vocab.items()}
    self.ranks = {tuple(pair): rank for rank, pair in enumerate(merges)}
    self.bos_id = self.vocab[bos_token]
    self.eos_id = self.vocab[eos_token]
    self.unk_id = self.vocab[unk_token]
    self.pad_id = self.vocab[pad_token] if pad_token is not None else 0
    self.model_max_length = model_max_length
    self.html_unescape = html_unescape
    self.normalized_specials = normalized_specials
    self._byte_chars = bytes_to_unicode()
    self._cache = {}

  @classmethod
  def from_dir(cls, directory: str | os.PathLike, **kwargs) -> 'ClipTokenizer':
    """Reads vocab.json, merges.txt ('#version' header skipped) and, if
    present, the special tokens and model_max_length of
    tokenizer_config.json / special_tokens_map.json and the special tokens'
    `normalized` flags of tokenizer.json."""
    directory = pathlib.Path(directory)
    vocab = json.loads((directory / 'vocab.json').read_text(encoding='utf-8'))
    merges = []
    with open(directory / 'merges.txt', encoding='utf-8') as f:
      for line in f:
        line = line.rstrip('\n').rstrip('\r')
        if not line.strip() or line.startswith('#version'):
          continue
        parts = line.split()
        if len(parts) != 2:
          raise ValueError(f'{directory / "merges.txt"}: bad merge {line!r}')
        merges.append((parts[0], parts[1]))
    config = {}
    for name in ('special_tokens_map.json', 'tokenizer_config.json'):
      path = directory / name
      if path.is_file():
        config.update(json.loads(path.read_text(encoding='utf-8')))
    options = {
        'bos_token': _read_special(config, 'bos_token', BOS),
        'eos_token': _read_special(config, 'eos_token', EOS),
        'pad_token': _read_special(config, 'pad_token', EOS),
        'unk_token': _read_special(config, 'unk_token', EOS),
    }
    max_length = config.get('model_max_length')
    if isinstance(max_length, int) and 0 < max_length < 1_000_000:
      options['model_max_length'] = max_length
    path = directory / 'tokenizer.json'
    if path.is_file():
      added = json.loads(
          path.read_text(encoding='utf-8')).get('added_tokens') or []
      options['normalized_specials'] = any(
          t.get('normalized', False)
          for t in added
          if t.get('content') in (BOS, EOS))
    options.update(kwargs)
    return cls(vocab, merges, **options)

  # ------------------------------------------------------------ pieces ---

  def _bpe(self, word: str) -> list[str]:
    """Step 4 for one pre-tokenized word (bytes already mapped)."""
    if word in self._cache:
      return self._cache[word]
    symbols = list(word[:-1]) + [word[-1] + END_OF_WORD]
    while len(symbols) > 1:
      pairs = {(a, b) for a, b in zip(symbols[:-1], symbols[1:])}
      best = min(pairs, key=lambda p: self.ranks.get(p, float('inf')))
      if best not in self.ranks:
        break
      merged, i = [], 0
      while i < len(symbols):
        if (i < len(symbols) - 1 and symbols[i] == best[0] and
            symbols[i + 1] == best[1]):
          merged.append(best[0] + best[1])
          i += 2
        else:
          merged.append(symbols[i])
          i += 1
      symbols = merged
    if len(self._cache) < 100_000:
      self._cache[word] = symbols
    return symbols

  def tokenize(self, text: str) -> list[str]:
    """One text -> BPE pieces (no start/end tokens)."""
    pieces = []
    if self.normalized_specials:
      text = clean_text(text, self.html_unescape)
    for chunk, special in split_special(text, (BOS, EOS)):  # Step 2.
      if special:
        pieces.append(chunk)
        continue
      if not self.normalized_specials:
        chunk = clean_text(chunk, self.html_unescape)
      for word in _pre_tokenize(chunk):
        mapped = ''.join(self._byte_chars[b] for b in word.encode('utf-8'))
        pieces.extend(self._bpe(mapped))
    return pieces

  def convert_tokens_to_ids(self, tokens: Sequence[str]) -> list[int]:
    return [self.vocab.get(t, self.unk_id) for t in tokens]

  def convert_ids_to_tokens(self, ids: Sequence[int]) -> list[str]:
    return [self.inverse[int(i)] for i in ids]

  def decode(self, ids: Sequence[int]) -> str:
    """Ids -> text (start/end/pad tokens dropped; '</w>' -> ' ')."""
    byte_values = {c: b for b, c in self._byte_chars.items()}
    specials = {self.bos_id, self.eos_id, self.pad_id}
    data = bytearray()
    for token in (self.inverse[int(i)] for i in ids if int(i) not in specials):
      end = token.endswith(END_OF_WORD)
      if end:
        token = token[:-len(END_OF_WORD)]
      data.extend(byte_values[c] for c in token if c in byte_values)
      if end:
        data.extend(b' ')
    return data.decode('utf-8', errors='replace').strip()

  # ------------------------------------------------------------ encode ---

  def encode_one(self, text: str, max_length: int | None = None) -> list[int]:
    """<|startoftext|> pieces <|endoftext|> as ids, pieces truncated to
    max_length - 2 (default: model_max_length, 77)."""
    max_length = self.model_max_length if max_length is None else max_length
    if max_length < 2:
      raise ValueError(f'max_length must be >= 2, got {max_length}')
    ids = self.convert_tokens_to_ids(self.tokenize(text))
    return [self.bos_id] + ids[:max_length - 2] + [self.eos_id]

  def encode(self, texts: str | Sequence[str], max_length: int | None = None,
             pad_to: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Texts -> (ids int32 [B, L], mask bool [B, L]).

    Each row is <|startoftext|> pieces <|endoftext|> (pieces truncated so
    the row holds at most `max_length` ids), then the pad id with mask
    False (as HF's tokenizer(texts, truncation=True, padding=...)).

    Args:
      texts: a string or a sequence of B strings.
      max_length: the most ids a row keeps, both ends included; None: the
        tokenizer's model_max_length (77, CLIP's context).
      pad_to: L, a fixed width (rows are truncated to min(max_length,
        pad_to)); None: the longest row.
    """
    max_length = self.model_max_length if max_length is None else max_length
    return padded_batch.encode_padded(self.encode_one, texts, max_length,
                                      pad_to, self.pad_id)
