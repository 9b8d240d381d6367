"""How a checkpoint's state differs from the state a config builds, in words.

A readable checkpoint that does not fit is a config problem, not a damaged
checkpoint: `describe` names the first leaves that differ (paths, shapes,
dtypes, compared with repeated blocks unstacked, so the scanned and unrolled
layouts of one model agree) and, where the difference is a known switch
(tied heads, block style, gradient clipping on or off), the setting to use.
"""

from collections.abc import Iterable
import re
from typing import Any

import jax
import numpy as np

from vqlab.nn import stack


def _path_name(entry) -> str:
  for attr in ('key', 'name', 'idx'):
    if hasattr(entry, attr):
      return str(getattr(entry, attr))
  return str(entry)


def is_leaf(x: Any) -> bool:
  """Whether `x` is an array or an array's description (shape and dtype)."""
  return hasattr(x, 'shape') and hasattr(x, 'dtype')


def leaves(tree: Any) -> dict[str, Any]:
  """{'params/decoder/conv_in/kernel': leaf} of a state, abstract state or
  Orbax metadata tree (attribute and dict paths alike), in tree order."""
  with_paths = jax.tree_util.tree_leaves_with_path(tree, is_leaf=is_leaf)
  return {
      '/'.join(_path_name(e) for e in path):
          leaf for path, leaf in with_paths if hasattr(leaf, 'shape')
  }


def signature(tree: Any) -> dict[str, tuple[tuple[int, ...], str]]:
  """{'params/decoder/conv_in/kernel': (shape, dtype)} of a tree's leaves."""
  return {
      k: (tuple(leaf.shape), str(np.dtype(leaf.dtype)))
      for k, leaf in leaves(tree).items()
  }


def _unrolled_signature(tree: Any) -> dict[str, tuple[tuple[int, ...], str]]:
  """`signature` with every scanned stack of blocks unstacked
  (vqlab.nn.stack): the same for both layouts of one state."""
  stacked = signature(tree)
  paths = stack.unstacked_paths({k: shape for k, (shape, _) in stacked.items()})
  return {
      path: (stacked[where][0][int(index is not None):], stacked[where][1])
      for path, (where, index) in paths.items()
  }


def describe(saved: Any, expected: Any, limit: int = 3) -> str | None:
  """None when the two trees hold the same leaves (paths, shapes, dtypes) up
  to how repeated blocks are stacked (scanned or unrolled); else a short
  description of the first differences, in unrolled paths."""
  old, new = _unrolled_signature(saved), _unrolled_signature(expected)
  params_first = lambda keys: sorted(
      keys, key=lambda k: (not k.startswith('params/'), k))
  problems = [
      f'{k} is {old[k][0]} {old[k][1]} there, {new[k][0]} '
      f'{new[k][1]} here'
      for k in params_first(old.keys() & new.keys())
      if old[k] != new[k]
  ]
  problems += [
      f'{k} only in the checkpoint' for k in params_first(old.keys() -
                                                          new.keys())
  ]
  problems += [
      f'{k} missing from the checkpoint' for k in params_first(new.keys() -
                                                               old.keys())
  ]
  if not problems:
    return None
  more = len(problems) - limit
  differing = {k for k in old.keys() | new.keys() if old.get(k) != new.get(k)}
  return ('; '.join(problems[:limit]) + (f'; {more} more' if more > 0 else '') +
          _head_layout_hint(old.keys(), new.keys()) +
          _training_state_hint(differing))


# What shapes each part of the train state beside the params.
_STATE_KEYS = {
    'opt_state': 'optimizer.*.grad_clip_norm (on or off), the weight-decay '
                 'settings and freeze',
    'ema_params': 'ema.decay (on or off)',
    'loss_state': 'loss.lecam_weight (on or off; tokenizers) and '
                  'model.num_timesteps (VQ-Diffusion: its loss history)',
    'model_state': "the quantizer's settings",
}


def _training_state_hint(differing: set[str]) -> str:
  """A hint when the params are the same and only the state that training
  keeps beside them differs: the model is the same, a setting that shapes
  that state changed (e.g. gradient clipping switched on)."""
  parts = sorted({k.split('/')[0] for k in differing})
  if not parts or 'params' in parts or not set(parts) <= set(_STATE_KEYS):
    return ''
  return ('. The params are the same: the state training keeps beside them '
          f'differs ({", ".join(parts)}), which '
          f'{"; ".join(_STATE_KEYS[p] for p in parts)} shape; keep those as '
          'config.json records them to train on here, or start another '
          '--workdir from these params (a tokenizer: warm_start)')


def _head_layout_hint(saved: Iterable[str], expected: Iterable[str]) -> str:
  """A hint when a MaskGIT checkpoint's output heads are tied and the
  model's are not, or its blocks are of the other `block_style`, or the
  other way (vqlab.generators.maskgit), a GPT's are of the other
  `block_style`, or a class-conditional VQ-Diffusion checkpoint predates its
  class norms."""
  tied = lambda keys: any(re.search(r'/tied_head_\d+/', k) for k in keys)
  untied = lambda keys: any(re.search(r'/head_\d+/', k) for k in keys)
  if tied(saved) and untied(expected):
    return '. The checkpoint has tied heads: resume it with model.tied_heads = True'
  if untied(saved) and tied(expected):
    return ('. The checkpoint has untied heads (vqlab before 2026-12): resume '
            'it with model.tied_heads = False')
  bert = lambda keys: any(re.search(r'/embed_norm/', k) for k in keys)
  pre_ln = lambda keys: any(
      re.search(r'/transformer/final_norm/', k) for k in keys)
  if pre_ln(saved) and bert(expected):
    return ('. The checkpoint has pre-LN blocks (the MaskGIT configs before '
            "2026-12-06): resume it with model.block_style = 'pre_ln'")
  if bert(saved) and pre_ln(expected):
    return ('. The checkpoint has post-LN BERT blocks: resume it with '
            "model.block_style = 'bert'")
  head_bias = lambda keys: any(re.search(r'(^|/)head/bias$', k) for k in keys)
  head = lambda keys: any(re.search(r'(^|/)head/kernel$', k) for k in keys)
  if head_bias(saved) and head(expected) and not head_bias(expected):
    return ('. The checkpoint is a GPT with a head bias (the GPT configs '
            "before 2026-12-06): resume it with model.block_style = 'pre_ln'")
  if head(saved) and not head_bias(saved) and head_bias(expected):
    return ('. The checkpoint is a GPT of taming\'s blocks: resume it with '
            "model.block_style = 'taming'")
  class_token = lambda keys: any('/class_embed/' in k and '/block' not in k
                                 for k in keys) and any('/cross_attention/' in k
                                                        for k in keys)
  class_norms = lambda keys: any('/block' in k and '/class_embed/' in k
                                 for k in keys)
  if class_token(saved) and class_norms(expected):
    return ('. The checkpoint is a class-conditional VQ-Diffusion of vqlab '
            'before 2026-12-06 (cross-attention to a class token; its blocks '
            'now take the class through their norms, as the release): no '
            'config of this vqlab restores it, train it again')
  return ''
