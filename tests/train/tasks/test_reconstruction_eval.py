"""The tokenizer eval suite's MS-SSIM and bit rates, from arrays."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from vqlab.evals import accumulator
from vqlab.train.tasks import reconstruction_eval


def _batch(seed, shape, codebook_size, token_shape):
  rng = np.random.default_rng(seed)
  x = rng.uniform(-1, 1, shape).astype(np.float32)
  x_rec = np.clip(x + 0.2 * rng.standard_normal(shape), -1, 1)
  # Skewed code frequencies: the entropy is well below log2 K.
  probs = 0.5**np.arange(codebook_size)
  indices = rng.choice(codebook_size, (shape[0],) + token_shape,
                       p=probs / probs.sum())
  return x, x_rec.astype(np.float32), indices.astype(np.int32)


def test_video_ms_ssim_and_the_token_streams_bits_per_pixel():
  codebook_size, token_shape = 64, (2, 3, 4)
  evaluation = reconstruction_eval.ReconstructionEval(codebook_size)
  outputs = jax.jit(evaluation.outputs)
  acc = accumulator.EvalAccumulator()
  masks = (np.array([1, 1], bool), np.array([1, 0], bool))  # 1 padded row.
  batches = [
      _batch(seed, (2, 3, 161, 170, 3), codebook_size, token_shape)
      for seed in range(2)
  ]
  for (x, x_rec, indices), mask in zip(batches, masks):
    acc.add(outputs(x, x_rec, indices, jnp.asarray(mask), {})[0])
  metrics = evaluation.summarize(acc)

  real = [
      (b, row) for b, mask in enumerate(masks) for row in np.flatnonzero(mask)
  ]
  assert metrics['num_examples'] == len(real) == 3
  per_clip = [
      tf.image.ssim_multiscale((batches[b][0][row] + 1.0) / 2,
                               (batches[b][1][row] + 1.0) / 2,
                               max_val=1.0).numpy().mean() for b, row in real
  ]
  np.testing.assert_allclose(metrics['ms_ssim'], np.mean(per_clip), atol=2e-5)
  # 24 token positions for 3 x 161 x 170 pixels; 6 bits a token as stored,
  # the entropy of the real rows' code histogram with an ideal coder.
  tokens_per_pixel = 24 / (3 * 161 * 170)
  np.testing.assert_allclose(metrics['bits_per_pixel'], tokens_per_pixel * 6,
                             rtol=1e-12)
  codes = np.concatenate([batches[b][2][row].ravel() for b, row in real])
  freqs = np.bincount(codes, minlength=codebook_size) / codes.size
  entropy = -np.sum(freqs[freqs > 0] * np.log2(freqs[freqs > 0]))
  assert entropy < 3
  np.testing.assert_allclose(metrics['entropy_bits_per_pixel'],
                             tokens_per_pixel * entropy, rtol=1e-12)


def test_frames_under_161_pixels_have_no_ms_ssim():
  evaluation = reconstruction_eval.ReconstructionEval(16)
  x, x_rec, indices = _batch(0, (2, 160, 200, 3), 16, (10, 12))
  acc = accumulator.EvalAccumulator()
  acc.add(evaluation.outputs(x, x_rec, indices, jnp.ones((2,)), {})[0])
  metrics = evaluation.summarize(acc)
  assert 'ms_ssim' not in metrics and 'ssim' in metrics
  np.testing.assert_allclose(metrics['bits_per_pixel'], 120 / (160 * 200) * 4,
                             rtol=1e-12)


def test_batches_of_other_example_shapes_are_refused():
  evaluation = reconstruction_eval.ReconstructionEval(16)
  acc = accumulator.EvalAccumulator()
  outputs = lambda side: evaluation.outputs(
      *_batch(0, (2, side, side, 3), 16, (side // 4,) * 2), jnp.ones(
          (2,)), {})[0]
  acc.add(outputs(16))
  with pytest.raises(
      ValueError, match='eval: pixel_positions is 256 in one '
      'batch and 576 in another'):
    acc.add(outputs(24))
