"""VQGAN f=16 with finite scalar quantization, levels [8, 8, 8, 5, 5, 5]
(64000 codes, the FSQ paper's 2^16 setting)."""

from configs.vqgan import _base


def get_config():
  config = _base.with_quantizer('fsq')
  config.model.quantizer.levels = (8, 8, 8, 5, 5, 5)
  return config
