"""Tiny configs shared by tests: every component small enough for CPU."""

from configs import quickstart


def tokenizer_config(image_size: int = 16, steps: int = 4):
  """A VQGAN experiment that compiles and steps in seconds on CPU."""
  config = quickstart.get_config()
  config.data.image_size = image_size
  config.data.train_image_size = 0
  config.model.channels = 8
  config.model.channel_multipliers = (1, 2)
  # No res blocks besides the middle's, no attention: a third less compile
  # time for every test that trains it (tests/tokenizers covers those parts).
  config.model.num_res_blocks = 0
  config.model.mid_attention = False
  config.model.z_channels = 8
  config.model.num_groups = 4
  config.model.quantizer.codebook_size = 32
  config.model.quantizer.embedding_dim = 4
  # The plain learned codebook and schedule: the loop's tests compare runs
  # step by step, not the quickstart's recipe.
  config.model.quantizer.ema = False
  config.model.quantizer.restart_threshold = 0.0
  config.optimizer.generator.schedule = 'constant'
  config.discriminator.base_features = 8
  config.discriminator.num_layers = 2
  # The GAN terms from the first step: one train program per run
  # (tests/train/test_loop.py runs one with the program before disc_start).
  config.loss.disc_start = 0
  config.optimizer.generator.warmup_steps = 0
  config.train.num_steps = steps
  config.train.batch_size = 8
  config.train.log_every = 1
  config.train.eval_every = 0
  config.train.checkpoint_every = 2
  config.eval.batch_size = 8
  config.eval.max_batches = 1
  config.eval.num_images = 4
  return config


def initial_run(config, workdir: str, devices=None) -> str:
  """Writes a run of `config` in `workdir`: its config.json and the initial
  (untrained) state as the checkpoint of step 1."""
  from vqlab.train import experiment  # pylint: disable=g-import-not-at-top
  exp = experiment.Experiment(config, workdir, devices)
  state, _ = exp.initial_state()
  exp.record_config(0)
  exp.checkpointer.save(1, state, force=True)
  exp.checkpointer.wait()
  exp.checkpointer.close()
  return workdir


def tokenizer_run(workdir: str, devices=None) -> str:
  """A tokenizer run in `workdir` with an initial (untrained) checkpoint.

  Stage-2 tests need a tokenizer run's files (config.json and a checkpoint),
  not a good tokenizer, so nothing is trained.
  """
  config = tokenizer_config()
  config.eval.lpips = config.eval.fid = 'off'
  return initial_run(config, workdir, devices)


def video_tokenizer_run(workdir: str, devices=None) -> str:
  """A MAGVIT-v2 run like `tokenizer_run` (untrained): 5-frame 16x16
  moving-shapes clips -> 3x8x8 tokens of 2^10 LFQ codes (its factor_bits
  (5, 5) split them into two factors of 32)."""
  from configs.magvit2 import tiny_cpu  # pylint: disable=g-import-not-at-top
  config = tiny_cpu.get_config()
  config.model.num_res_blocks = 0
  config.model.quantizer.factor_bits = (5, 5)
  config.eval.lpips = config.eval.fid = 'off'
  return initial_run(config, workdir, devices)


def generator_config(tokenizer_workdir: str, model: str = 'maskgit',
                     steps: int = 4):
  """A generator on `tokenizer_run` tokens: 16x16 photos -> 8x8 of 32 codes."""
  from configs.gpt import tiny_cpu as gpt_tiny  # pylint: disable=g-import-not-at-top
  from configs.maskgit import tiny_cpu as maskgit_tiny  # pylint: disable=g-import-not-at-top
  from vqlab import generators  # pylint: disable=g-import-not-at-top
  config = (gpt_tiny if model == 'gpt' else maskgit_tiny).get_config()
  if model == 'vq_diffusion':
    config.model = generators.default_config('vq_diffusion')
    config.model.token_shape = (8, 8)
    config.model.num_timesteps = 20
  config.tokenizer.workdir = tokenizer_workdir
  config.data.image_size = 16
  config.tokens.num_train_examples = 40
  config.tokens.batch_size = 8
  config.tokens.batches_per_shard = 2
  config.model.vocab_size = 32
  config.model.width = 32
  config.model.num_layers = 2
  config.model.num_heads = 2
  config.model.mlp_dim = 64
  config.eval.lpips = config.eval.fid = 'off'
  config.optimizer.warmup_steps = 0
  config.train.num_steps = steps
  config.train.batch_size = 8
  config.train.log_every = 1
  config.train.eval_every = 0
  config.train.checkpoint_every = 0
  config.eval.batch_size = 8
  config.eval.max_batches = 2
  config.eval.num_images = 4
  config.sample.num_samples = 6
  config.sample.batch_size = 4
  return config
