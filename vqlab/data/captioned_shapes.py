"""`captioned_shapes`: procedural images of two coloured shapes, with a caption that states them.

Every image shows two filled shapes on a plain background and comes with the caption

  caption  := subject " " relation " " object
  subject  := article " " COLOUR " " SHAPE          (the shape the sentence is about)
  object   := article " " COLOUR " " SHAPE
  article  := "a" | "an"                            ("an" before a vowel: "an orange circle")
  relation := "above" | "below" | "to the left of" | "to the right of"
  COLOUR   := a name in `data.colors`               (default red green blue yellow purple white)
  SHAPE    := a name in `data.shapes`               (default circle square triangle diamond)

e.g. "a red circle above a blue square", "a green triangle to the left of a yellow square". All
words are lower case, single-spaced, with no punctuation. The two shapes always have different
colours (so the caption names each shape unambiguously); they may be the same kind.

The relation is strictly true in the image: the bounding boxes of the two shapes (each shape fits
in the square of side 2 * radius around its centre) are separated along the relation's axis by a
gap of at least `min_gap` (fraction of the image side), so e.g. "A above B" means A's lowest
pixel lies above B's highest one, and the shapes never overlap or touch (no pixel mixes the two
colours). Along the other axis each shape is placed uniformly at random inside the image.

Example `i` is drawn from `np.random.default_rng((seed, i))` alone: the two shapes, two distinct
colours, the relation, the two diameters (fractions of the image side in `size_range`), and the
placement. Shapes are rendered with the antialiased 2x2 supersampling of `shapes.py`; colours are
the fixed RGB values of `PALETTE`, the background is `background` (grey levels in [0, 1]). Train
examples are indices [0, num_train_examples) in a seeded permutation per epoch; eval examples are
the next num_eval_examples indices, in order, so the two never overlap.

Batches: 'image' float32 [b, S, S, 3] in [-1, 1] and 'caption' numpy unicode [b] (dtype '<U..';
eval padding rows hold ''), and on eval 'mask' bool [b]. No labels (`num_classes` is None).
Captions are strings, so they cannot be put on accelerators: turn them into token ids on the host.
"""

from __future__ import annotations

import dataclasses

import ml_collections
import numpy as np

from vqlab.data import base
from vqlab.data import shapes as shapes_lib

# Named colours (RGB in [0, 1]), far apart from each other and from the default black background.
PALETTE = {
    'red': (0.9, 0.1, 0.1),
    'green': (0.1, 0.75, 0.2),
    'blue': (0.15, 0.3, 0.95),
    'yellow': (0.95, 0.85, 0.1),
    'purple': (0.6, 0.2, 0.8),
    'white': (0.95, 0.95, 0.95),
    'orange': (1.0, 0.55, 0.0),
    'cyan': (0.1, 0.85, 0.9),
}
COLORS = ('red', 'green', 'blue', 'yellow', 'purple', 'white')
SHAPES = ('circle', 'square', 'triangle', 'diamond')
# Relation -> (axis the shapes are separated along: 0 = y (down), 1 = x, whether the subject
# comes first along that axis).
RELATIONS = {
    'above': (0, True),
    'below': (0, False),
    'to the left of': (1, True),
    'to the right of': (1, False),
}


def default_config() -> ml_collections.ConfigDict:
  """Defaults of the `captioned_shapes` dataset."""
  return ml_collections.ConfigDict({
      'name': 'captioned_shapes',
      'image_size': 32,  # Side of the square output images (3 channels).
      'seed': 0,  # Seeds every example (and the per-epoch train order).
      'shapes': SHAPES,  # Shape words, from shapes.SHAPES (data/shapes.py).
      'colors': COLORS,  # Colour words, from PALETTE (at least two).
      'relations': tuple(RELATIONS),  # Relation phrases, from RELATIONS.
      'size_range':
          (0.25, 0.45
          ),  # Shape diameter as a fraction of the image side (lo, hi).
      'min_gap':
          0.05,  # Least gap between the shapes along the relation's axis (of the side).
      'background': 0.0,  # Grey level of the background, in [0, 1].
      'num_train_examples': 100_000,  # Train examples: indices [0, N).
      'num_eval_examples':
          1_000,  # Eval examples: indices [N_train, N_train + N_eval).
  })


@dataclasses.dataclass(frozen=True)
class Scene:
  """What example `index` shows; `[0]` is the caption's subject, `[1]` its object.

  Attributes:
    shapes: the two shape words.
    colors: the two colour words (distinct).
    relation: a key of RELATIONS: the subject is `relation` the object.
    centers: ((y, x), (y, x)) in pixels (y down), of the two shapes.
    radii: the two radii in pixels; shape k lies inside the square `centers[k] +- radii[k]`.
  """
  shapes: tuple[str, str]
  colors: tuple[str, str]
  relation: str
  centers: tuple[tuple[float, float], tuple[float, float]]
  radii: tuple[float, float]

  @property
  def caption(self) -> str:
    subject, object_ = (
        _noun_phrase(c, s) for c, s in zip(self.colors, self.shapes))
    return f'{subject} {self.relation} {object_}'


def _noun_phrase(color: str, shape: str) -> str:
  article = 'an' if color[0] in 'aeiou' else 'a'
  return f'{article} {color} {shape}'


def _words(config: ml_collections.ConfigDict, key: str, known,
           least: int) -> tuple[str, ...]:
  words = tuple(base.get(config, key))
  unknown = [w for w in words if w not in known]
  if len(words) < least or unknown or len(set(words)) != len(words):
    raise ValueError(
        f'data.{key}: need at least {least} distinct names from {list(known)}, got '
        f'{words!r}.')
  return words


class CaptionedShapeRenderer:
  """Renders example indices to images and captions; see the module docstring."""

  def __init__(self, *, seed: int, image_size: int, shapes: tuple[str, ...],
               colors: tuple[str, ...], relations: tuple[str, ...],
               size_range: tuple[float,
                                 float], min_gap: float, background: float):
    self.seed, self.size = seed, image_size
    self.shapes, self.colors, self.relations = shapes, colors, relations
    self.size_range, self.min_gap, self.background = size_range, min_gap, background
    self._ys, self._xs = shapes_lib.subpixel_grid(image_size)
    self.image_shape = (image_size, image_size, 3)
    self.video_shape, self.num_classes = None, None

  def scene(self, index: int) -> Scene:
    """The scene of example `index` (a function of (seed, index) alone)."""
    rng = np.random.default_rng((self.seed, index))
    kinds = tuple(
        self.shapes[int(k)] for k in rng.integers(len(self.shapes), size=2))
    colors = tuple(self.colors[int(c)]
                   for c in rng.choice(len(self.colors), 2, replace=False))
    relation = self.relations[int(rng.integers(len(self.relations)))]
    s = self.size
    radii = rng.uniform(*self.size_range, size=2) * s / 2
    axis, subject_first = RELATIONS[relation]
    first, second = (0, 1) if subject_first else (1, 0)
    # Along `axis`: [start, first box, gap, second box, rest]; start and gap share the slack.
    slack = s - 2 * radii.sum() - self.min_gap * s
    a, b = np.sort(rng.uniform(0, max(slack, 0.0), size=2))
    centers = np.empty((2, 2))
    centers[first, axis] = a + radii[first]
    centers[second, axis] = a + 2 * radii[first] + self.min_gap * s + (
        b - a) + radii[second]
    for k in range(2):
      centers[k, 1 - axis] = rng.uniform(radii[k], s - radii[k])
    return Scene(shapes=kinds, colors=colors, relation=relation, centers=tuple(
        (float(y), float(x)) for y, x in centers),
                 radii=(float(radii[0]), float(radii[1])))

  def render(self, scene: Scene) -> np.ndarray:
    """float32 [S, S, 3] in [-1, 1] of `scene`."""
    image = np.full((self.size, self.size, 3), self.background)
    for kind, color, (cy, cx), radius in zip(scene.shapes, scene.colors,
                                             scene.centers, scene.radii):
      alpha = shapes_lib.coverage(kind, self._ys, self._xs, cy, cx, radius)
      image = image * (1 - alpha) + np.asarray(PALETTE[color]) * alpha
    return (image * 2 - 1).astype(np.float32)

  def example(self, index: int) -> tuple[np.ndarray, str]:
    """Example `index`: (float32 [S, S, 3] in [-1, 1], caption)."""
    scene = self.scene(index)
    return self.render(scene), scene.caption

  def batch(self, indices: np.ndarray) -> base.Batch:
    """int [k] indices -> {'image': float32 [k, S, S, 3], 'caption': unicode [k]}."""
    images = np.empty((len(indices), self.size, self.size, 3), np.float32)
    captions = []
    for i, index in enumerate(indices):
      images[i], caption = self.example(int(index))
      captions.append(caption)
    return {'image': images, 'caption': np.array(captions, dtype=str)}


def _renderer(config: ml_collections.ConfigDict) -> CaptionedShapeRenderer:
  size_range = base.fraction_range(config, 'size_range')
  min_gap = float(base.get(config, 'min_gap'))
  if not 0 <= min_gap < 1:
    raise ValueError(f'data.min_gap: must be in [0, 1), got {min_gap}.')
  if 2 * size_range[1] + min_gap > 1:
    raise ValueError(
        f'data.size_range: two shapes of the largest diameter and data.min_gap must '
        f'fit side by side: need 2 * {size_range[1]} + {min_gap} <= 1.')
  background = float(base.get(config, 'background'))
  if not 0 <= background <= 1:
    raise ValueError(f'data.background: must be in [0, 1], got {background}.')
  return CaptionedShapeRenderer(
      seed=int(base.get(config, 'seed')),
      image_size=base.positive_int(config, 'image_size'),
      shapes=_words(config, 'shapes', shapes_lib.SHAPES,
                    1), colors=_words(config, 'colors', PALETTE, 2),
      relations=_words(config, 'relations', RELATIONS, 1),
      size_range=size_range, min_gap=min_gap, background=background)


def build(config: ml_collections.ConfigDict, *, split: str,
          global_batch_size: int, process_index: int,
          process_count: int) -> base.DataSource:
  """Builds the source: 'image' float32 [b, S, S, 3] in [-1, 1], 'caption' unicode [b]."""
  return base.rendered_source(config, _renderer, split=split,
                              global_batch_size=global_batch_size,
                              process_index=process_index,
                              process_count=process_count)
