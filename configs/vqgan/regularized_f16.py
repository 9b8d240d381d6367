"""Regularized VQ, the paper's setting: VQGAN f=16 (16x16 tokens at 256^2),
N = 1024 codes, stochastic mask ratio 0.4.

The paper gives no temperature or loss weights; the quantizer's defaults and
their reasons are in vqlab/quantizers/regularized.py. The probabilistic
contrastive loss (VGG19 features, needs vgg19-dcbb9e9d.pth in the weights
directory) reads `QuantizerOutput.extras['pcl_weights']`; it is used "with the
perceptual loss", at a weight we chose as 0.1 (the perceptual loss keeps
taming's 1.0), temperature 0.07 and 256 patches per layer as in PatchNCE.
"""

from configs.vqgan import _base


def get_config():
  config = _base.with_quantizer('regularized')
  q = config.model.quantizer
  q.codebook_size = 1024
  q.embedding_dim = 256
  q.mask_ratio = 0.4
  config.loss.pcl_weight = 0.1
  return config
