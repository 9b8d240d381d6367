"""Writes the VQ-Diffusion converter goldens with the released modules:

  git clone https://github.com/microsoft/VQ-Diffusion /tmp/vqd
  <python with torch, numpy, einops> \\
      tests/goldens/make_vq_diffusion_goldens.py /tmp/vqd

The reference is the release's own code: its DiffusionTransformer
(image_synthesis/modeling/transformers/diffusion_transformer.py) around a
Condition2ImageTransformer (transformer_utils.py) with a
DalleMaskImageEmbedding, configured as configs/imagenet.yaml (attn_type
'selfcondition', class_type and timestep_type 'adalayernorm', GELU2,
conv_mlp) but tiny; log p(x_0 | x_t) is its `predict_start` (log_softmax
over the codes in float64, a [MASK] row of -70, clamped to [-70, 0]). Its
forward moves t to CUDA: here `Tensor.cuda` is the identity.

Files:
  vq_diffusion_tiny.pth   a checkpoint as the release's solver saves one,
                          {'model': {'transformer.<DiffusionTransformer
                          state dict>'}, 'epoch'}: 12 codes (+ [MASK]), a
                          4 x 4 content grid over 8 x 8 position tables,
                          width 16, 2 layers, 2 heads, MLP 2 x width, 5
                          classes, T = 10, every parameter random.
  vq_diffusion_tiny.npz   x_t [3, 16] (with [MASK] = 12), t [3] (the
                          release's, from 0), labels [3], log_p [3, 13, 16]
                          (the release's layout [B, K + 1, N]) and
                          log_p_null [3, 13, 16] of the same x_t, t with
                          the null class (label 5: the mean of each class
                          table, the release's 1000-row ImageNet tables).
  vq_diffusion_keys.json  names and shapes of the released ImageNet
                          network (configs/imagenet.yaml) as its checkpoint
                          names them ('model.transformer.transformer.').
"""

import json
import os
import sys

import numpy as np
import torch

GOLDEN_DIR = os.path.dirname(os.path.abspath(__file__))
CODES, CLASSES, STEPS, GRID, TABLES = 12, 5, 10, 4, 8


def network_config(codes, classes, layers, width, heads, mlp_times, grid,
                   tables):
  """The release's transformer_config and content_emb_config dicts."""
  content = {
      'target': 'image_synthesis.modeling.embeddings.dalle_mask_image_'
                'embedding.DalleMaskImageEmbedding',
      'params': {
          'num_embed': codes,
          'spatial_size': (tables, tables),
          'embed_dim': width,
          'trainable': True,
          'pos_emb_type': 'embedding'
      }
  }
  transformer = {
      'target': 'image_synthesis.modeling.transformers.transformer_utils.'
                'Condition2ImageTransformer',
      'params': {
          'attn_type': 'selfcondition',
          'n_layer': layers,
          'class_type': 'adalayernorm',
          'class_number': classes,
          'content_seq_len': grid * grid,
          'content_spatial_size': [grid, grid],
          'n_embd': width,
          'n_head': heads,
          'attn_pdrop': 0.0,
          'resid_pdrop': 0.0,
          'block_activate': 'GELU2',
          'timestep_type': 'adalayernorm',
          'mlp_hidden_times': mlp_times,
          'mlp_type': 'conv_mlp'
      }
  }
  return transformer, content


def main(checkout: str):
  sys.path.insert(0, checkout)
  torch.Tensor.cuda = lambda self, *args, **kwargs: self
  # pylint: disable=g-import-not-at-top
  from image_synthesis.modeling.transformers import diffusion_transformer
  from image_synthesis.utils.misc import instantiate_from_config

  transformer, content = network_config(974, 1000, 24, 512, 16, 4, 16, 32)
  transformer['params'].update(diffusion_step=100, content_emb_config=content)
  with torch.device('meta'):
    full = instantiate_from_config(transformer)
  keys = {
      f'model.transformer.transformer.{k}': list(v.shape)
      for k, v in full.state_dict().items()
  }
  with open(os.path.join(GOLDEN_DIR, 'vq_diffusion_keys.json'), 'w') as f:
    json.dump(keys, f, indent=0, sort_keys=True)

  torch.manual_seed(0)
  transformer, content = network_config(CODES, CLASSES, 2, 16, 2, 2, GRID,
                                        TABLES)
  model = diffusion_transformer.DiffusionTransformer(
      content_emb_config=content, transformer_config=transformer,
      diffusion_step=STEPS, alpha_init_type='alpha1').eval()
  generator = torch.Generator().manual_seed(1)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith('to_logits.0.weight'):
        p.uniform_(0.5, 1.5, generator=generator)
      else:
        p.normal_(0.0, 0.1 if name.endswith('bias') else 0.3,
                  generator=generator)
  rng = np.random.default_rng(0)
  x_t = rng.integers(0, CODES + 1, (3, GRID * GRID))
  x_t[0, :5] = CODES  # [MASK]
  t = np.array([0, 4, STEPS - 1])
  labels = np.array([4, 0, 2])
  num_states = CODES + 1

  def log_p(label_ids):
    log_x_t = diffusion_transformer.index_to_log_onehot(torch.from_numpy(x_t),
                                                        num_states)
    with torch.no_grad():
      return model.predict_start(log_x_t, torch.from_numpy(label_ids),
                                 torch.from_numpy(t)).numpy()

  np.savez(os.path.join(GOLDEN_DIR,
                        'vq_diffusion_tiny.npz'), x_t=x_t, t=t, labels=labels,
           log_p=log_p(labels), log_p_null=log_p(np.full(3, CLASSES)))
  state = {f'transformer.{k}': v for k, v in model.state_dict().items()}
  torch.save({
      'model': state,
      'epoch': 0
  }, os.path.join(GOLDEN_DIR, 'vq_diffusion_tiny.pth'))


if __name__ == '__main__':
  main(sys.argv[1])
