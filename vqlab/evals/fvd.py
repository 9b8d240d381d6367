"""FVD: the Fréchet distance between I3D features of two sets of clips.

The features are the Kinetics-400 logits of I3D (vqlab.nn.i3d) on the first
`eval.fvd_frames` frames of each clip, resized to 224 x 224; their float64
statistics and the distance are FID's (vqlab.evals.fid). Protocol:
vqlab/evals/PROTOCOLS.md.
"""

import jax
import jax.numpy as jnp

from vqlab.nn import i3d


def features(params, videos: jax.Array, num_frames: int) -> jax.Array:
  """I3D features [B, 400] of videos [B, T, H, W, 3] in [-1, 1] (clipped),
  from their first `num_frames` frames."""
  clips = jnp.clip(videos[:, :num_frames].astype(jnp.float32), -1, 1)
  return i3d.InceptionI3d().apply({'params': params}, clips)['logits']
