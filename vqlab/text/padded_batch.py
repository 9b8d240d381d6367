"""Texts to a padded batch of ids, for any tokenizer that encodes one text."""

from collections.abc import Callable, Sequence

import numpy as np


def encode_padded(encode_one: Callable[[str, int],
                                       list[int]], texts: str | Sequence[str],
                  max_length: int, pad_to: int | None,
                  pad_id: int) -> tuple[np.ndarray, np.ndarray]:
  """Texts -> (ids int32 [B, L], mask bool [B, L]).

  Args:
    encode_one: (text, max_length) -> its ids, both end tokens included.
    texts: a string or a sequence of B strings.
    max_length: the most ids a row keeps, both end tokens included.
    pad_to: L, a fixed width (rows are truncated to min(max_length,
      pad_to)); None: L is the longest row (a fixed width avoids recompiling
      a jitted encoder for each batch).
    pad_id: the id after a row's end, where the mask is False.
  """
  if isinstance(texts, np.ndarray):
    texts = texts.tolist() if texts.ndim else [texts.item()]
  if isinstance(texts, str):
    texts = [texts]
  if (not isinstance(texts, (list, tuple)) or
      not all(isinstance(t, str) for t in texts)):
    raise ValueError(f'texts must be a string or a sequence of strings, got '
                     f'{texts!r:.80}')
  if pad_to is not None and (isinstance(pad_to, bool) or
                             not isinstance(pad_to, (int, np.integer))):
    raise ValueError(f'pad_to must be an int or None, got {pad_to!r}')
  if pad_to is not None and pad_to < 2:
    raise ValueError(f"pad_to must be >= 2 (a row's two end tokens), got "
                     f'{pad_to}')
  limit = max_length if pad_to is None else min(max_length, pad_to)
  rows = [encode_one(text, limit) for text in texts]
  width = pad_to if pad_to is not None else max(
      (len(row) for row in rows), default=2)
  ids = np.full((len(rows), width), pad_id, np.int32)
  mask = np.zeros((len(rows), width), np.bool_)
  for i, row in enumerate(rows):
    ids[i, :len(row)] = row
    mask[i, :len(row)] = True
  return ids, mask
