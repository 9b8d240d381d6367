"""Writes the MaskGIT transformer goldens (JAX reference, no torch):

  git clone https://github.com/google-research/maskgit /tmp/maskgit
  /work/venv/bin/python tests/goldens/make_maskgit_transformer_goldens.py \
      /tmp/maskgit/maskgit/nets/maskgit_transformer.py

The reference is the released module itself, maskgit/nets/maskgit_transformer.py
of google-research/maskgit (a post-LN BERT; it imports only flax and jax), so
its parameters carry the released checkpoint's names (Embed_0,
TransformerLayer_3/Attention_0/self_attention/query, MlmLayer_0/mlm_bias, ...).

Files:
  maskgit_transformer_tiny.msgpack  {'params': ...} of a reduced model for
                         the tiny MaskGIT VQGAN of make_maskgit_goldens.py
                         (32 codes, 4x4 tokens) and 3 classes: vocab 32 + 3
                         + 1, 17 positions, width 32, 2 layers, 4 heads, MLP
                         64; every parameter random; written with
                         flax.serialization.to_bytes like the released
                         maskgit_imagenet256_checkpoint.
  maskgit_transformer_goldens.npz   input_ids [3, 17] as MaskGIT's inference
                         builds them (label + 32 first, then codes and the
                         [MASK] id -1) and the reference's logits [3, 17,
                         36] (deterministic).
  maskgit_transformer_keys.json     names and shapes of the full-size
                         released ImageNet 256 transformer (1024 codes, 1000
                         classes, 257 positions, width 768, 24 layers, 16
                         heads, MLP 3072).
"""

import importlib.util
import json
import os
import sys

import flax
import jax
import jax.numpy as jnp
import numpy as np

GOLDEN_DIR = os.path.dirname(os.path.abspath(__file__))
CODES, CLASSES, SIDE = 32, 3, 4


def load_reference(path: str):
  spec = importlib.util.spec_from_file_location('maskgit_transformer', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def randomize(params, seed):
  """Every leaf random: kernels ~ N(0, 1/fan_in), LayerNorm scales in
  [0.5, 1.5], embeddings ~ N(0, 1), biases ~ 0.1 N(0, 1)."""
  flat = flax.traverse_util.flatten_dict(params)
  rng = np.random.default_rng(seed)
  out = {}
  for path, leaf in sorted(flat.items()):
    shape = leaf.shape
    if path[-1] == 'kernel':
      fan_in = np.prod(shape[:-1]) if 'out' not in path else np.prod(shape[:2])
      value = rng.standard_normal(shape) / np.sqrt(fan_in)
    elif path[-1] == 'scale':
      value = rng.uniform(0.5, 1.5, shape)
    elif path[-1] == 'embedding':
      value = rng.standard_normal(shape)
    else:
      value = 0.1 * rng.standard_normal(shape)
    out[path] = np.asarray(value, np.float32)
  return flax.traverse_util.unflatten_dict(out)


def main(reference_path: str):
  ref = load_reference(reference_path)
  full = ref.Transformer(vocab_size=1024 + 1000 + 1, hidden_size=768,
                         num_hidden_layers=24, num_attention_heads=16,
                         intermediate_size=3072, max_position_embeddings=257)
  shapes = jax.eval_shape(full.init, jax.random.PRNGKey(0),
                          jnp.zeros((1, 257), jnp.int32))['params']
  keys = {
      '.'.join(path): list(leaf.shape)
      for path, leaf in flax.traverse_util.flatten_dict(shapes).items()
  }
  with open(os.path.join(GOLDEN_DIR, 'maskgit_transformer_keys.json'),
            'w') as f:
    json.dump(keys, f, indent=0, sort_keys=True)

  tiny = ref.Transformer(vocab_size=CODES + CLASSES + 1, hidden_size=32,
                         num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=64,
                         max_position_embeddings=SIDE * SIDE + 1)
  rng = np.random.default_rng(0)
  codes = rng.integers(0, CODES, (3, SIDE * SIDE))
  # Example 0 all [MASK] (the first decoding step), 1 half masked, 2 none.
  masked = np.stack([
      np.ones(SIDE * SIDE, bool),
      rng.uniform(size=SIDE * SIDE) < 0.5,
      np.zeros(SIDE * SIDE, bool)
  ])
  labels = np.array([0, 2, 1])
  input_ids = np.concatenate(
      [labels[:, None] + CODES,
       np.where(masked, -1, codes)], axis=1).astype(np.int32)
  params = tiny.init(jax.random.PRNGKey(0), jnp.asarray(input_ids))['params']
  params = randomize(params, seed=1)
  logits = tiny.apply({'params': params}, jnp.asarray(input_ids),
                      deterministic=True)
  with open(os.path.join(GOLDEN_DIR, 'maskgit_transformer_tiny.msgpack'),
            'wb') as f:
    f.write(flax.serialization.to_bytes({'params': params}))
  np.savez(os.path.join(GOLDEN_DIR, 'maskgit_transformer_goldens.npz'),
           input_ids=input_ids, logits=np.asarray(logits, np.float32))
  print('logits std', float(np.std(logits)), 'argmax over codes',
        np.asarray(jnp.argmax(logits[..., :CODES], -1))[:, 1:6])


if __name__ == '__main__':
  main(sys.argv[1])
