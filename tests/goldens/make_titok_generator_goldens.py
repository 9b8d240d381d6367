"""Writes the TiTok generator goldens (PyTorch reference, HF transformers):

  /tmp/venv-torch/bin/python tests/goldens/make_titok_generator_goldens.py

(a venv with torch and transformers 4.x). The reference is the released
generator of bytedance/1d-tokenizer, modeling/maskgit.py's `ImageBert`: a
`transformers.BertModel` (erf GELU, LayerNorm epsilon 1e-12, absolute
positions, no pooler) over one vocabulary of K codes, [MASK] (id K), C
classes (K + 1 + c) and the dropped label (K + C + 1), the condition as the
first token, and `lm_head` Linear(width, K) on the other positions. It is
rebuilt below with the release's module names; the sizes are parameters here
(the release fixes width 768, 24 layers, 16 heads, MLP 3072).

Files:
  titok_generator_tiny.safetensors  the state dict of a reduced model for
                          the tiny TiTok of make_titok_goldens.py (16 codes,
                          8 tokens) and 3 classes: width 32, 2 layers, 4
                          heads, MLP 64; every tensor random
                          (tests/goldens/seeded_weights.py), saved as the
                          released generators' model.safetensors.
  titok_generator_goldens.npz       tokens [3, 8] (K = [MASK]), conditions
                          [3] (3 = the dropped label) and the reference's
                          logits [3, 8, 16] (`forward`, cond_drop_prob 0,
                          eval mode).
  titok_generator_keys.json         names and shapes of the released
                          TiTok-L-32 generator (4096 codes, 1000 classes, 32
                          tokens).
"""

import json
import os
import sys

ROOT = os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

import numpy as np  # pylint: disable=g-bad-import-order
import safetensors.torch
import torch
from torch import nn
import transformers

from tests.goldens import seeded_weights

GOLDEN_DIR = os.path.dirname(os.path.abspath(__file__))
CODES, CLASSES, TOKENS = 16, 3, 8


class ImageBert(nn.Module):
  """modeling/maskgit.py's ImageBert, its sizes as arguments."""

  def __init__(self, codes, classes, tokens, width, layers, heads, mlp):
    super().__init__()
    self.codes, self.classes = codes, classes
    self.model = transformers.BertModel(
        transformers.BertConfig(
            vocab_size=codes + classes + 2, hidden_size=width,
            num_hidden_layers=layers, num_attention_heads=heads,
            intermediate_size=mlp, hidden_act='gelu', hidden_dropout_prob=0.1,
            attention_probs_dropout_prob=0.1,
            max_position_embeddings=tokens + 1, initializer_range=0.02,
            layer_norm_eps=1e-12, pad_token_id=None,
            position_embedding_type='absolute', use_cache=True),
        add_pooling_layer=False)
    self.model.lm_head = nn.Linear(width, codes, bias=True)

  def forward(self, input_ids, condition):
    """The release's forward with cond_drop_prob = 0: condition c is token
    K + 1 + c (c = C: the dropped label)."""
    condition = condition + self.codes + 1
    ids = torch.cat([condition[:, None], input_ids], dim=1)
    hidden = self.model(input_ids=ids)[0]
    return self.model.lm_head(hidden[:, 1:])


def main():
  with torch.device('meta'):
    full = ImageBert(4096, 1000, 32, 768, 24, 16, 3072)
  keys = {k: list(v.shape) for k, v in full.state_dict().items()}
  with open(os.path.join(GOLDEN_DIR, 'titok_generator_keys.json'), 'w') as f:
    json.dump(keys, f, indent=0, sort_keys=True)

  tiny = ImageBert(CODES, CLASSES, TOKENS, 32, 2, 4, 64).eval()
  names = list(tiny.state_dict())
  state = seeded_weights.draw_state_dict(
      names, [tuple(v.shape) for v in tiny.state_dict().values()], seed=7)
  tiny.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
  rng = np.random.default_rng(0)
  codes = rng.integers(0, CODES, (3, TOKENS))
  # Example 0 all [MASK] (the first decoding step), 1 half masked, 2 none.
  masked = np.stack([
      np.ones(TOKENS, bool),
      rng.uniform(size=TOKENS) < 0.5,
      np.zeros(TOKENS, bool)
  ])
  tokens = np.where(masked, CODES, codes).astype(np.int64)
  conditions = np.array([0, 2, CLASSES])  # The last: the dropped label.
  with torch.no_grad():
    logits = tiny(torch.from_numpy(tokens), torch.from_numpy(conditions))
  safetensors.torch.save_file(
      tiny.state_dict(),
      os.path.join(GOLDEN_DIR, 'titok_generator_tiny.safetensors'))
  np.savez(os.path.join(GOLDEN_DIR, 'titok_generator_goldens.npz'),
           tokens=tokens.astype(np.int32),
           conditions=conditions.astype(np.int32),
           logits=logits.numpy().astype(np.float32))
  print('keys', len(keys), 'logits std', float(logits.std()), 'argmax',
        logits.argmax(-1)[:, :6].tolist())


if __name__ == '__main__':
  main()
