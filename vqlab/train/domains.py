"""The natural domain of every numeric key of every default config.

One table, by dotted path in the experiment config; `experiment.validate`
checks every number (and every entry of a tuple of numbers) against it before
any other value check, so a negative learning rate or a dropout rate of 1.5
stops the run with one line naming the key. Components that appear at several
paths (a quantizer under `model.quantizer` and TiTok's
`model.pixel_decoder.quantizer`, the optimizers, nested datasets) have one
section table mounted at each path. A key added to a default config needs an
entry here (tests/train/test_config.py sweeps every numeric key).

Notation (as in the messages): '>= 0', '> 0', '[0, 1)', '(0, 1]', and special
values before the range: '-1 or >= 1'.
"""

from vqlab.config_schema import Domain

_COUNT = '>= 1'
_STEP = '-1 or >= 0'  # A checkpoint step; -1: the newest.

# Sections every experiment has, and the tasks' own sections.
_EXPERIMENT = {
    'seed': '>= 0',
    'train.num_steps': _COUNT,
    'train.batch_size': _COUNT,
    'train.log_every': _COUNT,
    'train.eval_every': '>= 0',  # 0: only at the end.
    'train.checkpoint_every': '>= 0',
    'train.max_to_keep': _COUNT,
    'train.preemption_check_every': _COUNT,
    'train.microbatches': _COUNT,
    'eval.batch_size': _COUNT,
    'eval.max_batches': '-1 or >= 1',  # -1: the whole split.
    'eval.step': _STEP,
    'eval.num_images': _COUNT,
    'eval.fvd_frames': _COUNT,
    'mesh.data': '-1 or >= 1',  # -1: the remaining devices.
    'mesh.fsdp': _COUNT,
    'ema.decay': '[0, 1)',  # 0: off.
    # Tokenizer task.
    'loss.reconstruction_weight': '>= 0',
    'loss.perceptual_weight': '>= 0',
    'loss.disc_weight': '>= 0',
    'loss.disc_start': '>= 0',
    'loss.adaptive_delta': '> 0',
    'loss.adaptive_max': '> 0',
    'loss.lecam_weight': '>= 0',
    'loss.lecam_decay': '[0, 1)',
    'loss.r1_weight': '>= 0',
    'loss.pcl_weight': '>= 0',
    'loss.pcl_temperature': '> 0',
    'loss.pcl_num_patches': '>= 0',  # 0: all positions.
    'loss.pcl_epsilon': '> 0',
    'warm_start.step': _STEP,
    'warm_start.pixel_vqgan_step': _STEP,
    # Generator task.
    'tokenizer.step': _STEP,
    'tokens.batch_size': _COUNT,
    'tokens.batches_per_shard': _COUNT,
    'tokens.num_train_examples': '-1 or >= 1',  # -1: one pass.
    'condition.factor': _COUNT,
    'condition.tokenizer_step': _STEP,
    'loss.label_smoothing': '[0, 1)',
    'loss.label_drop': '[0, 1]',
    'loss.aux_weight': '>= 0',
    'loss.unmasked_weight': '>= 0',
    'loss.observed_frames': '>= 0',
    'loss.observed_frames_rate': '[0, 1]',
    'text.max_length': _COUNT,
    'sample.num_samples': _COUNT,
    'sample.batch_size': _COUNT,
    'sample.seed': '>= 0',
    'sample.temperature': '>= 0',  # 0: argmax.
    'sample.num_steps': _COUNT,
    'sample.choice_temperature': '>= 0',
    'sample.guidance_scale': '>= 0',  # 0: off.
    'sample.top_k': '>= 0',  # 0: off.
    'sample.top_p': '(0, 1]',
    'sample.diffusion_steps': '>= 0',  # 0: all T.
    'sample.truncation': '(0, 1]',
    'sample.grid_shape': _COUNT,  # Entry by entry.
    'sample.purity_weight': '>= 0',
    'sample.observed_frames': '>= 0',
    # TiTok proxy-code task.
    'proxy.step': _STEP,
}

# Tokenizers and generators (`model`); also TiTok's pixel decoder (a VQGAN)
# and its ViTs (`model.encoder`, `model.decoder`).
_MODEL = {
    'in_channels': _COUNT,
    'channels': _COUNT,
    'channel_multipliers': _COUNT,
    'num_res_blocks': '>= 0',
    'attention_levels': '>= 0',
    'z_channels': _COUNT,
    'num_groups': _COUNT,
    'dropout_rate': '[0, 1)',
    'mid_res_blocks': _COUNT,
    'conv_out_kernel': _COUNT,
    'num_temporal_downsamples': '>= 0',
    'temporal_kernel': _COUNT,
    'image_size': _COUNT,
    'patch_size': _COUNT,
    'num_latent_tokens': _COUNT,
    'proxy_codebook_size': _COUNT,
    'proxy_head_hidden': '>= 0',  # 0: no hidden layer.
    'layer_norm_epsilon': '> 0',
    'vocab_size': _COUNT,
    'length': _COUNT,
    'token_shape': _COUNT,
    'factor_vocab_sizes': _COUNT,
    'num_classes': '>= 0',  # 0: unconditional.
    'width': _COUNT,
    'num_layers': _COUNT,
    'num_heads': _COUNT,
    'mlp_dim': _COUNT,
    'cond_vocab_size': _COUNT,
    'cond_length': _COUNT,
    'cond_dim': _COUNT,
    'num_timesteps': _COUNT,
    'abar_1': '(0, 1]',
    'abar_T': '(0, 1]',
    'gbar_1': '[0, 1)',
    'gbar_T': '[0, 1)',
}

# Every quantizer (vq, gumbel, regularized, lfq, fsq).
_QUANTIZER = {
    'codebook_size': _COUNT,
    'embedding_dim': _COUNT,
    'beta': '>= 0',
    'loss_weight': '>= 0',
    'projection_dim': '>= 0',  # 0: no projection.
    'decay': '[0, 1)',
    'epsilon': '> 0',
    'restart_threshold': '>= 0',  # 0: no restarts.
    'temperature': '> 0',
    'temperature_final': '> 0',
    'temperature_anneal_steps': '>= 0',
    'gumbel_temperature': '> 0',
    'mask_ratio': '[0, 1]',
    'kl_weight': '>= 0',
    'codebook_weight': '>= 0',
    'commitment_weight': '>= 0',
    'entropy_weight': '>= 0',
    'entropy_weight_final': '>= 0',
    'entropy_anneal_steps': '>= 0',
    'entropy_temperature': '> 0',
    'entropy_groups': _COUNT,
    'factor_bits': _COUNT,
    'levels': '>= 3',
}

_DISCRIMINATOR = {
    'base_features': _COUNT,
    'num_layers': _COUNT,
    'channel_multipliers': _COUNT,
}

_OPTIMIZER = {
    'learning_rate': '> 0',
    'b1': '[0, 1)',
    'b2': '[0, 1)',
    'eps': '> 0',
    'weight_decay': '>= 0',
    'warmup_steps': '>= 0',
    'grad_clip_norm': '>= 0',  # 0: no clipping.
}

# Every dataset (a dataset's own checks add the relations between keys).
_DATA = {
    'image_size': _COUNT,
    'train_image_size': '>= 0',  # 0: image_size.
    'seed': '>= 0',
    'channels': _COUNT,
    'crop_min_fraction': '(0, 1]',
    'eval_tiles_per_side': _COUNT,
    'size_range': '(0, 1]',
    'min_contrast': '[0, 1]',
    'num_train_examples': _COUNT,
    'num_eval_examples': _COUNT,
    'eval_examples': _COUNT,
    'min_gap': '[0, 1)',
    'background': '[0, 1]',
    'crop_area_range': '(0, 1]',
    'crop_aspect_range': '> 0',
    'shuffle_buffer': _COUNT,
    'eval_fraction': '(0, 1)',
    'num_frames': _COUNT,
    'frame_stride': _COUNT,
    'eval_clips_per_video': '>= 0',  # 0: every clip.
    'num_shapes': _COUNT,
    'min_speed': '>= 0',
    'max_speed': '>= 0',
    'image_batch_fraction': '(0, 1)',
}

# (paths where a section is mounted, its table).
_SECTIONS = (
    (('',), _EXPERIMENT),
    (('model', 'model.pixel_decoder', 'model.encoder', 'model.decoder'),
     _MODEL),
    (('model.quantizer', 'model.pixel_decoder.quantizer'), _QUANTIZER),
    (('discriminator',), _DISCRIMINATOR),
    (('optimizer', 'optimizer.generator', 'optimizer.discriminator'),
     _OPTIMIZER),
    (('data', 'data.image', 'data.video'), _DATA),
)

DOMAINS: dict[str, Domain] = {
    f'{mount}.{key}' if mount else key: Domain.parse(notation)
    for mounts, table in _SECTIONS
    for mount in mounts
    for key, notation in table.items()
}
