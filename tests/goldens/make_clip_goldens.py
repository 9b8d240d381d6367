"""Writes tests/goldens/clip_tiny/ (a small random CLIPTextModel with a
tiny CLIP-format BPE vocabulary) and tests/goldens/clip_goldens.npz:

  /work/venv-torch/bin/python tests/goldens/make_clip_goldens.py

No download: the vocabulary is CLIP's layout (the 256 byte characters, the
same with '</w>', the merges, <|startoftext|>, <|endoftext|>) with ~300
merges learned here from CORPUS by plain BPE; the model is
transformers.CLIPTextModel (hidden 64, 2 layers, 4 heads, MLP 128,
quick_gelu, 77 positions) with seeded random weights (biases and LayerNorm
affines randomized too, so they are checked). The directory is written by
save_pretrained (config.json, model.safetensors) plus the tokenizer's
save_pretrained (vocab.json, merges.txt, tokenizer_config.json, ...).

The npz holds, for TEXTS (punctuation, numbers, caps, accents, a long one
past 77 tokens, empty) tokenized by transformers.CLIPTokenizer with
truncation to 77 and padding to the longest row (77): `ids`, `mask`, and
the model's `last_hidden_state` ([N, 77, 64]) and `pooler_output`
([N, 64]); and for TOKENIZE_TEXTS (odd characters, special tokens in the
text, ...) the tokenizer's ids only (`tokenize_ids`, padded with -1).
"""

import collections
import json
import os
import re
import shutil
import sys

ROOT = os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

# pylint: disable-next=g-bad-import-order,unused-import
from tests.goldens import torch_env

import numpy as np  # pylint: disable=g-bad-import-order
import torch
import transformers

GOLDEN_DIR = os.path.dirname(os.path.abspath(__file__))
MODEL_DIR = os.path.join(GOLDEN_DIR, 'clip_tiny')
NUM_MERGES = 300

CORPUS = """
a photo of a cat sitting on a red sofa. a photo of a dog running on the
beach. two dogs playing with a ball in the park. a red car parked next to a
blue house. an oil painting of a lighthouse at dusk, with boats drifting on
the sea. the quick brown fox jumps over the lazy dog. a bowl of fruit on a
wooden table: apples, oranges and bananas. it's a sunny day and they're
going to the market; we've seen the photos. i'm sure you'll like it, she'd
said. a close-up photograph of a yellow flower with green leaves. people
walking on a street in the city at night, with lights and shops. a
painting of a mountain landscape with snow and trees. a small boat on a
lake under a cloudy sky. the cat is sleeping on the bed next to the window.
a man riding a horse in a field. a woman holding an umbrella in the rain.
a plate of food with rice, chicken and vegetables. three birds sitting on
a branch. a train passing through the countryside. an old building with a
clock tower. children playing football in the park in the afternoon.
"""

LONG = ' '.join(
    f'Sentence number {i} describes a small boat drifting past the old '
    'lighthouse at dusk.' for i in range(8))

TEXTS = [
    'A photo of a cat sitting on a red sofa.',
    "Hello, world! It's 3:45pm -- what's up?? (really) $100 & 50% off #tag "
    '@user ~x^2 `code` [brackets] {braces} a|b <tag/>',
    'Café naïve résumé façade Ünïcödé ÅNGSTRÖM crème brûlée',
    'In 1999, 42 PEOPLE bought 3.14159 pies for $2,500.00 on 12/25 at '
    '10:30; 1st 2nd 3rd',
    LONG,
    '',
]

TOKENIZE_TEXTS = [
    '  leading and trailing   spaces  ',
    'UPPER lower MiXeD',
    "don't won't y'all o'clock THEY'RE we'VE i'M you'LL he'D it's's '",
    "''s !'s x's 's",
    'e-mail co-operate state-of-the-art ...!!! ?!',
    'naïve coöperate São Paulo Zürich Ελληνικά ΟΔΟΣ Привет мир İstanbul',
    'cafe\u0301 decomposed n\u0303 A\u030a',  # NFC composes these.
    'ﬁne ﬂow ½ ² ™ © ° µ Å',
    'Ｈｅｌｌｏ　ｗｏｒｌｄ ３４５',
    '東京 中文字 こんにちは 한국어 テスト',
    '😀😃 👍🏽 🇩🇪 ☃ ♥',
    '\u00a0nbsp\u2003em\u3000id\u2028ls\u0085nel\x0bvt\x0cff\tTab\nNl',
    'soft\u00adhyphen zw\u200bsp zw\u200cnj bom\ufeffx rep\ufffdx '
    'ctrl\x07bel nul\x00x sep\x1cfs',
    'a<|endoftext|>b <|startoftext|> c!<|endoftext|>! <|ENDOFTEXT|> '
    '<|endoftext',
    '&amp; &lt;3 &quot;quoted&quot; &#39;',
    '€100 £50 ¥1000 ₹20 1,000,000 0.001 1e-5 -3 +7 ٣٤ Ⅻ ²³',
    'https://example.com/path?q=1&r=2#frag user@mail.org',
    'zzzzzzzzzzzzzzzzzzzz qqqq xylophone',
    '\t\n\r',
    'x',
]

# ------------------------------------------------------------ tiny BPE ---


def bytes_to_unicode():
  keep = (list(range(ord('!'),
                     ord('~') + 1)) + list(range(ord('¡'),
                                                 ord('¬') + 1)) +
          list(range(ord('®'),
                     ord('ÿ') + 1)))
  mapping = {b: chr(b) for b in keep}
  extra = 0
  for b in range(256):
    if b not in mapping:
      mapping[b] = chr(256 + extra)
      extra += 1
  return mapping


def train_bpe(text, num_merges):
  """Plain BPE over CLIP-style words (bytes mapped, '</w>' on the last
  symbol): the most frequent pair (ties: the smallest pair) each round."""
  byte_chars = bytes_to_unicode()
  words = collections.Counter(
      re.findall(r"'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|[^\s\w]+",
                 text.lower()))
  corpus = {}
  for word, count in words.items():
    mapped = ''.join(byte_chars[b] for b in word.encode('utf-8'))
    symbols = tuple(mapped[:-1]) + (mapped[-1] + '</w>',)
    corpus[symbols] = corpus.get(symbols, 0) + count
  merges = []
  for _ in range(num_merges):
    pairs = collections.Counter()
    for symbols, count in corpus.items():
      for pair in zip(symbols[:-1], symbols[1:]):
        pairs[pair] += count
    if not pairs:
      break
    best = min(pairs, key=lambda p: (-pairs[p], p))
    merges.append(best)
    new_corpus = {}
    for symbols, count in corpus.items():
      out, i = [], 0
      while i < len(symbols):
        if i < len(symbols) - 1 and (symbols[i], symbols[i + 1]) == best:
          out.append(symbols[i] + symbols[i + 1])
          i += 2
        else:
          out.append(symbols[i])
          i += 1
      new_corpus[tuple(out)] = new_corpus.get(tuple(out), 0) + count
    corpus = new_corpus
  chars = list(bytes_to_unicode().values())
  tokens = chars + [c + '</w>' for c in chars] + [a + b for a, b in merges]
  tokens += ['<|startoftext|>', '<|endoftext|>']
  vocab = {}
  for token in tokens:
    vocab.setdefault(token, len(vocab))
  return vocab, merges


def write_tokenizer_files(directory):
  vocab, merges = train_bpe(CORPUS, NUM_MERGES)
  with open(os.path.join(directory, 'vocab.json'), 'w', encoding='utf-8') as f:
    json.dump(vocab, f, ensure_ascii=False)
  with open(os.path.join(directory, 'merges.txt'), 'w', encoding='utf-8') as f:
    f.write('#version: 0.2\n')
    for a, b in merges:
      f.write(f'{a} {b}\n')
  return vocab


# ---------------------------------------------------------------- main ---


def main():
  torch.set_num_threads(2)
  torch.manual_seed(0)
  if os.path.isdir(MODEL_DIR):
    shutil.rmtree(MODEL_DIR)
  os.makedirs(MODEL_DIR)
  vocab = write_tokenizer_files(MODEL_DIR)
  tokenizer = transformers.CLIPTokenizer.from_pretrained(MODEL_DIR)
  assert len(tokenizer) == len(vocab), (len(tokenizer), len(vocab))
  tokenizer.model_max_length = 77
  tokenizer.save_pretrained(MODEL_DIR)
  print('vocab', len(vocab), 'bos', tokenizer.bos_token_id, 'eos',
        tokenizer.eos_token_id, 'pad', tokenizer.pad_token_id)

  config = transformers.CLIPTextConfig(
      vocab_size=len(vocab), hidden_size=64, intermediate_size=128,
      num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77,
      hidden_act='quick_gelu', layer_norm_eps=1e-5,
      bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
      pad_token_id=tokenizer.pad_token_id)
  model = transformers.CLIPTextModel(config).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith('bias'):
        p.normal_(0.0, 0.1)
      elif 'norm' in name:
        p.normal_(1.0, 0.2)
      elif 'embedding' in name:
        p.normal_(0.0, 0.5)
      else:
        p.normal_(0.0, p.shape[-1]**-0.5)
  model.save_pretrained(MODEL_DIR)
  # Reload from the files, as a user would.
  model = transformers.CLIPTextModel.from_pretrained(
      MODEL_DIR, attn_implementation='eager').eval()
  tokenizer = transformers.CLIPTokenizer.from_pretrained(MODEL_DIR)

  enc = tokenizer(TEXTS, padding=True, truncation=True, max_length=77,
                  return_tensors='pt')
  with torch.no_grad():
    out = model(input_ids=enc['input_ids'],
                attention_mask=enc['attention_mask'])
  ids = enc['input_ids'].numpy().astype(np.int32)
  mask = enc['attention_mask'].numpy().astype(bool)

  rows = []
  for text in TOKENIZE_TEXTS:
    row = tokenizer(text, truncation=True, max_length=77)['input_ids']
    rows.append(row)
  width = max(len(r) for r in rows)
  tokenize_ids = np.full((len(rows), width), -1, np.int32)
  for i, row in enumerate(rows):
    tokenize_ids[i, :len(row)] = row

  arrays = {
      'texts': np.array(TEXTS),
      'ids': ids,
      'mask': mask,
      'last_hidden_state': out.last_hidden_state.numpy().astype(np.float32),
      'pooler_output': out.pooler_output.numpy().astype(np.float32),
      'tokenize_texts': np.array(TOKENIZE_TEXTS),
      'tokenize_ids': tokenize_ids,
  }
  path = os.path.join(GOLDEN_DIR, 'clip_goldens.npz')
  np.savez_compressed(path, **arrays)
  print('wrote', path, f'{os.path.getsize(path)} bytes')
  for name in sorted(os.listdir(MODEL_DIR)):
    print(' ', name, os.path.getsize(os.path.join(MODEL_DIR, name)))
  print('token counts:', mask.sum(1))
  for text, row in zip(TEXTS + TOKENIZE_TEXTS, list(ids) + list(tokenize_ids)):
    row = [int(i) for i in row if i >= 0]
    print(repr(text[:40]), tokenizer.convert_ids_to_tokens(row)[:24])
  print('states', arrays['last_hidden_state'].shape,
        float(np.abs(arrays['last_hidden_state']).max()), 'pooled',
        arrays['pooler_output'].shape)


if __name__ == '__main__':
  main()
