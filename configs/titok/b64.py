"""TiTok-B-64 at 256x256 (Yu et al. 2024): 64 tokens of 4096 12-dim
l2-normalized codes, ViT-B encoder and decoder, patch size 16. Stage 1
predicts the codes of the MaskGIT VQGAN (configs/vqgan/maskgit_f16.py, 1024
codes on a 16x16 grid) trained in workdirs/vqgan_maskgit_f16; stage 2
fine-tunes the decoder in pixel space (configs/titok/_common.py).

  python main.py --config=configs/titok/b64.py:1 --workdir=workdirs/titok_b64_stage1
  python main.py --config=configs/titok/b64.py:2 --workdir=workdirs/titok_b64_stage2
"""

from configs.titok import _common


def get_config(stage: str = '1'):
  return _common.paper_config('b64', 'B', 64, stage)
