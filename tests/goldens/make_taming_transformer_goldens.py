"""Writes the taming transformer converter goldens with the released module:

  git clone https://github.com/CompVis/taming-transformers /tmp/taming
  <python with torch> tests/goldens/make_taming_transformer_goldens.py \
      /tmp/taming/taming/modules/transformer/mingpt.py

The reference is taming's minGPT itself (taming/modules/transformer/
mingpt.py: GPT, Block, CausalSelfAttention), as `Net2NetTransformer` runs
it: the class-conditional ImageNet transformer ('cin_transformer') reads
[class index] + codes[:-1] through one token table (taming's Labelator
gives the class as a token index) and its logits [:, i] predict codes[i].

Files:
  taming_transformer_tiny.ckpt   a PyTorch-Lightning style checkpoint of a
                         reduced Net2NetTransformer for the tiny taming VQGAN
                         of make_taming_goldens.py (64 codes, 16x16 tokens)
                         and 3 classes: the GPT (vocab 64, block size 256,
                         width 32, 2 layers, 4 heads) under 'transformer.'
                         with every parameter random (the attention masks
                         are buffers it saves too), the tiny VQGAN of
                         taming_tiny.ckpt as its first stage
                         ('first_stage_model.') and an epoch counter.
  taming_transformer_goldens.npz labels [2], codes [2, 256] and the
                         reference's logits [2, 256, 64].
  taming_transformer_keys.json   names and shapes of the released
                         cin_transformer's GPT (vocab 16384, block size 256,
                         width 1536, 48 layers, 24 heads), 'transformer.'
                         prefixed.
"""

import importlib.util
import json
import os
import sys
import types

import numpy as np
import torch

GOLDEN_DIR = os.path.dirname(os.path.abspath(__file__))
CODES, CLASSES, TOKENS = 64, 3, 256


def load_reference(path: str):
  # mingpt imports top_k_top_p_filtering from transformers for sampling,
  # which these goldens do not use.
  fake = types.ModuleType('transformers')
  fake.top_k_top_p_filtering = None
  sys.modules.setdefault('transformers', fake)
  spec = importlib.util.spec_from_file_location('mingpt', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def main(reference_path: str):
  ref = load_reference(reference_path)
  with torch.device('meta'):
    full = ref.GPT(vocab_size=16384, block_size=256, n_layer=48, n_head=24,
                   n_embd=1536)
  keys = {
      f'transformer.{k}': list(v.shape) for k, v in full.state_dict().items()
  }
  with open(os.path.join(GOLDEN_DIR, 'taming_transformer_keys.json'), 'w') as f:
    json.dump(keys, f, indent=0, sort_keys=True)

  torch.manual_seed(0)
  tiny = ref.GPT(vocab_size=CODES, block_size=TOKENS, n_layer=2, n_head=4,
                 n_embd=32).eval()
  generator = torch.Generator().manual_seed(1)
  with torch.no_grad():
    for name, p in tiny.named_parameters():
      if name.endswith('ln1.weight') or name.endswith(
          'ln2.weight') or name == 'ln_f.weight':
        p.uniform_(0.5, 1.5, generator=generator)
      else:
        p.normal_(0.0, 0.3 if name.endswith('bias') else 0.5,
                  generator=generator)
  rng = np.random.default_rng(0)
  labels = np.array([2, 0])
  codes = rng.integers(0, CODES, (2, TOKENS))
  sequence = np.concatenate([labels[:, None], codes[:, :-1]], axis=1)
  with torch.no_grad():
    logits, _ = tiny(torch.from_numpy(sequence))
  state = {f'transformer.{k}': v for k, v in tiny.state_dict().items()}
  # The first stage: the tiny taming VQGAN (its GAN loss left out, as
  # Net2NetTransformer's first_stage_model has none).
  vqgan = torch.load(os.path.join(GOLDEN_DIR, 'taming_tiny.ckpt'),
                     map_location='cpu', weights_only=False)['state_dict']
  state.update({
      f'first_stage_model.{k}': v
      for k, v in vqgan.items()
      if not k.startswith('loss.')
  })
  torch.save({
      'state_dict': state,
      'epoch': 7
  }, os.path.join(GOLDEN_DIR, 'taming_transformer_tiny.ckpt'))
  np.savez(os.path.join(GOLDEN_DIR, 'taming_transformer_goldens.npz'),
           labels=labels, codes=codes.astype(np.int32),
           logits=logits.numpy().astype(np.float32))
  print('logits std', float(logits.std()), 'argmax',
        logits.argmax(-1)[:, :8].tolist())


if __name__ == '__main__':
  main(sys.argv[1])
