"""Splitting the special tokens written in a text (e.g. '[SEP]',
'<|endoftext|>') off the plain text around them, as HF tokenizers do before
they split words."""

from collections.abc import Sequence


def split_special(text: str, tokens: Sequence[str]) -> list[tuple[str, bool]]:
  """`text` as (chunk, is a special token) pairs, in order.

  Scans left to right; at each position the first of `tokens` written there
  (in the order given) is split off. Plain chunks between them are never
  empty.
  """
  tokens = [t for t in tokens if t]
  openings = {t[0] for t in tokens}  # Where a token may start.
  out = []
  start = position = 0
  while position < len(text):
    if text[position] in openings:
      match = next((t for t in tokens if text.startswith(t, position)), None)
      if match:
        if position > start:
          out.append((text[start:position], False))
        out.append((match, True))
        position += len(match)
        start = position
        continue
    position += 1
  if start < len(text):
    out.append((text[start:], False))
  return out
