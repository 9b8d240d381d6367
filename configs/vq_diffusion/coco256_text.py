"""Text-to-image VQ-Diffusion on MSCOCO 256x256 (Gu et al. 2022,
VQ-Diffusion-B: 19 blocks of width 1024, 16 heads, T = 100, lambda = 5e-4).

Departures from the paper, both for lack of weights here: the frozen text
encoder is all-MiniLM-L6-v2 (384-wide states) instead of CLIP ViT-B/32 (with
an HF CLIP checkpoint: text.encoder = 'clip', text.encoder_dir,
model.cond_dim = 512, text.normalize_states = True, as the release), and
the tokens are the taming VQGAN f=16's (configs/vqgan/taming_f16.py) instead of
the paper's 32x32 VQVAE. Captions come from tfds coco_captions (one of the five
per image, drawn anew each epoch: `data.caption_key`; so tokens are made on
the fly, not in shards). Length: the release's 100 epochs of its
dataset, whose examples are the 414,113 train captions (mscoco_dataset.py:
one per annotation), at this batch of 512 (81k steps). Images are not
flipped (the release's DalleTransformerPreprocessor never flips, and a flip
would contradict a caption's 'left' or 'right'); its crop (a near-centre
square, rescaled to 256-288, a random 256 crop) is here the shorter side
resized to 256 and a random 256 crop. Caption dropout 0.1
for guidance from the start (the release learns it in a fine-tune,
configs/coco_tune.yaml; the paper's FID 19.75 is without guidance).
"""

from configs.vq_diffusion import imagenet256_class
from vqlab import data
from vqlab import generators


def get_config():
  config = imagenet256_class.get_config()
  config.model.condition = 'text'
  # The class config's class count, back at its default (read by 'class').
  config.model.num_classes = generators.default_config(
      'vq_diffusion').num_classes
  config.model.text_encoder = 'frozen'
  config.model.cond_dim = 384
  config.data = data.default_config('tfds')
  config.data.tfds_name = 'coco_captions'
  config.data.image_key = 'image'
  config.data.caption_key = 'captions/text'
  config.data.label_key = ''  # coco_captions has no class label.
  config.data.eval_split = 'val'  # Its splits: train, val, test, restval.
  config.data.random_flip = False
  config.data.image_size = 256
  config.loss.aux_weight = 5e-4
  # The release's configs/coco.yaml: lr 2e-4 after 1000 warmup steps (and
  # halved when the loss stops falling for 60k steps; constant here).
  config.optimizer.learning_rate = 2e-4
  config.optimizer.warmup_steps = 1000
  config.train.num_steps = 100 * 414_113 // 512
  config.train.eval_every = 4_000
  config.train.checkpoint_every = 1_000
  config.text.max_length = 77
  # The release's classifier-free COCO sampling (inference_VQ_Diffusion.py):
  # no truncation, guidance s = 3; but in the class config's 25 fast-sampler
  # steps where the release walks all 100 (sample.diffusion_steps = 0 does).
  config.sample.truncation = 1.0
  config.sample.guidance_scale = 2.0  # s = 1 + w = 3.
  # No sample.prompts: samples take the val captions in order, as FID needs
  # (set prompts for pictures of your own; FID of a few is no protocol).
  # coco_captions' images hold five captions, of which training draws one
  # each epoch: token shards would keep one for the whole run, so the
  # tokenizer encodes each batch instead.
  config.tokens.source = 'on_the_fly'
  return config
