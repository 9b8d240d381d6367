"""The class labels of class-conditional samples (`sample.labels`).

'cycle': sample i has class i mod the classes, the same count of each (ADM's
50 per class for ImageNet gFID). 'train': sample i has the label of a
training example drawn uniformly at random with replacement, so the samples
follow the training set's class mix (MAGVIT's UCF-101 FVD protocol, whose
classes are unbalanced). The draw of sample i is its own generator's,
`np.random.default_rng((sample.seed, i))`: the same labels whatever
sample.batch_size, and whichever samples are drawn (eval pictures, a
sampling batch).
"""

import numpy as np

from vqlab.data import token_shards
from vqlab.errors import ConfigError

CHOICES = ('cycle', 'train')
LABEL = 'label'  # The shards' array of labels (the data's key).


def load_train(tokens_directory: str) -> np.ndarray:
  """int32 [N]: the labels of the token shards' train split, in stream order
  (only they are read, not the tokens).

  Raises:
    ConfigError: naming sample.labels, when the shards hold no labels or no
      train examples.
    ValueError: no complete train split there (`token_shards.load_split`).
  """
  arrays, _ = token_shards.load_split(tokens_directory, 'train', keys=(LABEL,))
  labels = arrays.get(LABEL)
  if labels is None or not len(labels):
    raise ConfigError(
        'sample.labels', f"'train', but the train tokens in "
        f'{tokens_directory} hold no labels to draw from (the data had none): '
        "use 'cycle'")
  return np.asarray(labels, np.int32)


def drawn(train_labels: np.ndarray, seed: int, index: np.ndarray) -> np.ndarray:
  """int32 [B]: the labels of samples `index` int [B]: sample i's is
  train_labels[default_rng((seed, i)).integers(N)] (N = len(train_labels))."""
  rows = [
      np.random.default_rng((seed, int(i))).integers(len(train_labels))
      for i in index
  ]
  return train_labels[np.asarray(rows, np.int64)].astype(np.int32)
