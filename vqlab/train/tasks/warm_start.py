"""Tokenizer params from other runs and params kept fixed: the `warm_start`
and `freeze` config sections (TiTok's stage 2 fine-tunes, for one).

A checkpoint's trees are copied by top-level name into this model's layout
of repeated blocks (scanned or unrolled, vqlab.nn.stack), whichever the
other run used.
"""

from typing import Any

import jax
import ml_collections
import numpy as np
import optax

from vqlab import fileio
from vqlab.errors import ConfigError
from vqlab.nn import stack
from vqlab.train import checkpoint as checkpoint_lib
from vqlab.train import run_record
from vqlab.train import trained_tokenizer
from vqlab.train.state import TrainState


def warm_started(state: TrainState, start: ml_collections.ConfigDict,
                 network: str) -> TrainState:
  """The fresh `state` with `start.params` (the `warm_start` section) of the
  tokenizer, `state.params[network]`, copied from another run: their params
  and their entries in the other collections of model_state, e.g. an EMA
  codebook's 'quantizer_stats' and a quantizer's schedule counter in
  'quantizer_state' (its temperature or entropy weight goes on from where
  that run left it); and a 'proxy_pixels' TiTok's pixel_vqgan from the
  `start.pixel_vqgan` run. The EMA, if any, starts from the copied params.

  Raises:
    ConfigError: a named param tree is missing or of another shape.
    CheckpointError: the other run has no readable checkpoint.
  """
  if not (start.params or start.pixel_vqgan):
    return state
  params = dict(state.params[network])
  model_state = state.model_state
  if start.params:
    tree, step = checkpoint_lib.restore_on_host(
        start.workdir, None if start.step < 0 else start.step,
        'warm_start.step')
    where = f'{start.workdir} (step {step})'
    params, model_state = _copied_trees(tree, params, model_state, start.params,
                                        where, network)
    fresh = sorted(
        set(params) & set((tree['ema_params'] or tree['params'])[network]) -
        set(start.params))
    if fresh:
      # E.g. a VQGAN's quant_conv and to_pixels beside its encoder and
      # decoder: a fine-tune named only those would start partly random.
      print(
          f'vqlab: warm_start copies {", ".join(start.params)} from '
          f'{where}; {", ".join(fresh)} of that run start from a fresh '
          'init (name them in warm_start.params to copy them too)', flush=True)
  if start.pixel_vqgan:
    tree, step = checkpoint_lib.restore_on_host(
        start.pixel_vqgan,
        None if start.pixel_vqgan_step < 0 else start.pixel_vqgan_step,
        'warm_start.pixel_vqgan_step')
    if start.params:
      check_stage1_codes(start.workdir, start.pixel_vqgan, step)
    where = f'{start.pixel_vqgan} (step {step})'
    target = params['pixel_vqgan']
    params['pixel_vqgan'] = _copied((tree['ema_params'] or
                                     tree['params'])[network], target,
                                    list(target), 'warm_start.pixel_vqgan',
                                    where)
    # E.g. an EMA codebook, kept with the statistics.
    model_state = {
        collection: ({
            **values, 'pixel_vqgan':
                _copied((tree.get('model_state') or {}).get(collection, {}),
                        values['pixel_vqgan'], list(values['pixel_vqgan']),
                        'warm_start.pixel_vqgan', where, collection)
        } if 'pixel_vqgan' in values else values
                    ) for collection, values in model_state.items()
    }
  all_params = {**state.params, network: params}
  # The EMA starts from the warm-started params, in buffers of its own: the
  # train step donates the state, and a buffer in two leaves would be
  # donated twice.
  ema = ({
      network: jax.tree.map(lambda x: x.copy(), params)
  } if state.ema_params else state.ema_params)
  return state.replace(params=all_params, ema_params=ema,
                       model_state=model_state)


def check_stage1_codes(stage1_workdir: str, pixel_vqgan: str,
                       step: int) -> None:
  """ConfigError naming warm_start.pixel_vqgan unless step `step` of the run
  `pixel_vqgan` is the proxy VQGAN whose codes the stage-1 run in
  `stage1_workdir` learned (its read_checkpoints.json, when it has one): its
  proxy-code head's probabilities are over that VQGAN's codebook, whose
  decoder turns them into pixels."""
  record = (run_record.read(stage1_workdir, run_record.READ_CHECKPOINTS_FILE) or
            {}).get('proxy.workdir')
  if not trained_tokenizer.is_record(record):
    return
  if (fileio.absolute(record['workdir']) != fileio.absolute(pixel_vqgan) or
      record['step'] != step):
    raise ConfigError(
        'warm_start.pixel_vqgan', f'step {step} of {pixel_vqgan}, but the '
        f'stage-1 run {stage1_workdir} learned the codes of step '
        f'{record["step"]} of {record["workdir"]}: name that run and step '
        '(warm_start.pixel_vqgan, warm_start.pixel_vqgan_step)')


def _copied_trees(tree: dict[str, Any], params: dict[str, Any],
                  model_state: dict[str, Any], names, where: str,
                  network: str) -> tuple[dict[str, Any], dict[str, Any]]:
  """(params, model_state) with the trees `names` copied from those of
  `network` in the checkpoint `tree` of the run `where`: their params, and their entries in
  every other collection (e.g. an EMA codebook with its statistics in
  'quantizer_stats'), each in this model's layout (`_copied`).

  Raises:
    ConfigError (naming warm_start.params): a name in neither model, one
      that is in a collection of one model but not of the other, or a tree of
      other shapes.
  """
  key = 'warm_start.params'
  source_params = (tree['ema_params'] or tree['params'])[network]
  source_state = tree.get('model_state') or {}
  found = lambda name, trees: any(name in t for t in trees)
  for name in names:
    if not (found(name, (params, source_params)) or
            found(name, (*model_state.values(), *source_state.values())) or
            name in _ALWAYS_THERE):
      raise ConfigError(
          key, f'{name!r} is in neither model: {where} has params '
          f'{sorted(source_params)}, this model {sorted(params)}')
  params = {
      **params,
      **_copied(source_params, params, [
          n for n in names if found(n, (params, source_params))
      ], key, where)
  }
  model_state = dict(model_state)
  for collection in sorted(set(model_state) | set(source_state)):
    values = model_state.get(collection, {})
    source = source_state.get(collection, {})
    these = [n for n in names if found(n, (values, source))]
    if these:
      model_state[collection] = {
          **values,
          **_copied(source, values, these, key, where, collection)
      }
  return params, model_state


def _copied(source: dict[str, Any], target: dict[str, Any], names, key: str,
            where: str, collection: str = 'params') -> dict[str, Any]:
  """{name: source[name]} for `names`, as arrays in the layout of repeated
  blocks (scanned or unrolled) that `target[name]` has; `source` and
  `target` are trees of `collection` (for the error).

  Raises:
    ConfigError (naming `key`): a name missing from either side, or a tree of
      other shapes (another architecture).
  """
  copied = {}
  for name in names:
    if name not in source or name not in target:
      raise ConfigError(
          key, f'{name!r} is not in both models\' {collection}: {where} has '
          f'{sorted(source)}, this model {sorted(target)}')
    value = source[name]
    if isinstance(value, dict):
      try:
        value = stack.match_layout(value, target[name])
      except ValueError:  # Another architecture: told below.
        pass
    shapes = lambda t: jax.tree.map(np.shape, t)
    if shapes(value) != shapes(target[name]):
      raise ConfigError(
          key, f'{name!r} has other shapes in {where} than in this model '
          f'({collection})')
    copied[name] = jax.tree.map(np.asarray, value)
  return copied


# Every tokenizer has a quantizer, which may hold no variables at all (FSQ,
# plain LFQ) or only state (an EMA codebook): `freeze` and
# `warm_start.params` may name it whatever it holds.
_ALWAYS_THERE = ('quantizer',)


def check_freeze(freeze, variables: dict[str, Any]) -> None:
  """Raises ConfigError (naming `freeze`) for a name that is neither a
  top-level tree of the model's variables (params or state, e.g. an EMA
  codebook's statistics) nor the quantizer."""
  known = {name for collection in variables.values() for name in collection}
  unknown = set(freeze) - known - set(_ALWAYS_THERE)
  if unknown:
    raise ConfigError(
        'freeze', f'no params or state named {sorted(unknown)}; the model has '
        f'{sorted(known | set(_ALWAYS_THERE))}')


def with_frozen(tx: optax.GradientTransformation,
                frozen: tuple[str, ...]) -> optax.GradientTransformation:
  """`tx` for all top-level params but those named in `frozen`, which get
  zero updates (no weight decay either)."""

  def labels(params):
    return {
        k: jax.tree.map(lambda _, k=k: 'frozen' if k in frozen else 'train', v)
        for k, v in params.items()
    }

  return optax.multi_transform({
      'train': tx,
      'frozen': optax.set_to_zero()
  }, labels)
