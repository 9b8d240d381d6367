"""TiTok-S-128 at 256x256 (Yu et al. 2024): 128 tokens of 4096 12-dim
l2-normalized codes, ViT-S encoder and decoder, patch size 16. Stage 1
predicts the codes of the MaskGIT VQGAN (configs/vqgan/maskgit_f16.py, 1024
codes on a 16x16 grid) trained in workdirs/vqgan_maskgit_f16; stage 2
fine-tunes the decoder in pixel space (configs/titok/_common.py).

  python main.py --config=configs/titok/s128.py:1 --workdir=workdirs/titok_s128_stage1
  python main.py --config=configs/titok/s128.py:2 --workdir=workdirs/titok_s128_stage2
"""

from configs.titok import _common


def get_config(stage: str = '1'):
  return _common.paper_config('s128', 'S', 128, stage)
