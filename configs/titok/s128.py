"""TiTok-S-128 at 256x256 (Yu et al. 2024): 128 tokens of 4096 12-dim
l2-normalized codes, ViT-S encoder and decoder, patch size 16. Stage 1
predicts the codes of a proxy VQGAN (1024 codes on a 16x16 grid): a run of
configs/vqgan/maskgit_f16.py in workdirs/vqgan_maskgit_f16, or with
`:1,released` the released MaskGIT VQGAN that the paper used, converted into
workdirs/maskgit_vqgan (configs/titok/_common.py); stage 2 fine-tunes the
decoder in pixel space.

  python main.py --config=configs/titok/s128.py:1 --workdir=workdirs/titok_s128_stage1
  python main.py --config=configs/titok/s128.py:2 --workdir=workdirs/titok_s128_stage2
  # The paper's proxy (after converting it into workdirs/maskgit_vqgan):
  python main.py --config=configs/titok/s128.py:1,released \\
      --workdir=workdirs/titok_s128_stage1_released
  python main.py --config=configs/titok/s128.py:2,released \\
      --workdir=workdirs/titok_s128_stage2_released
"""

from configs.titok import _common


def get_config(stage: str = '1'):
  return _common.paper_config('s128', 'S', 128, stage)
