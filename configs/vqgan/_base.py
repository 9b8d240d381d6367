"""The taming VQGAN f=16 experiment with its quantizer swapped.

`with_quantizer(name)` returns configs/vqgan/taming_f16.py with
`model.quantizer` replaced by the named quantizer's default config; each
configs/vqgan/<quantizer>_f16.py then sets the paper sizes.
"""

from configs.vqgan import taming_f16
from vqlab import quantizers


def with_quantizer(name: str):
  config = taming_f16.get_config()
  config.model.quantizer = quantizers.default_config(name)
  return config
