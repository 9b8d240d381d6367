r"""Train-step speed of any experiment config: compile time, steps/s,
examples/s, peak memory, model FLOPs and model FLOP utilization (MFU).

  python benchmarks/train_step.py --config=configs/quickstart.py \
      --config.train.batch_size=16 --steps=20 --json=/tmp/train_step.json

Prints a table and writes JSON. MFU = FLOPs per step (matmuls and convolutions
counted from the step's jaxpr, see flops.py) / step time / (devices x peak
FLOP/s), with the peak taken from PEAK_FLOPS for the device kind and compute
dtype; unknown devices (CPUs) get none. HFU counts also the forward work
that checkpoints (model.remat_policy, the always recomputed attention
weights, LayerNorms and GELUs) redo in the backward pass.
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app
from absl import flags
import jax
from ml_collections import config_flags

from benchmarks import budget
from benchmarks import flops as flops_lib
from benchmarks import results_json
from vqlab import data
from vqlab.train import experiment

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config.')
_STEPS = flags.DEFINE_integer('steps', 20, 'Timed steps (after 2 warm-up).')
_JSON = flags.DEFINE_string('json', None, 'Write the results here as JSON.')
_WORKDIR = flags.DEFINE_string('workdir', '/tmp/vqlab_benchmark',
                               'Scratch workdir (nothing is checkpointed).')

# Dense peak FLOP/s per device by (device kind substring, dtype), NVIDIA's
# and Google's datasheet figures; the first match counts, so the H100 PCIe
# and NVL come before the SXM ('NVIDIA H100 80GB HBM3'). float32 matmuls run
# as TF32 at JAX's default precision on these GPUs: their TF32 peaks. A
# v5p is 'TPU v5' on a TPU VM ('TPU v5p' under Pathways); 'TPU v4 lite' is
# the v4i.
PEAK_FLOPS = {
    ('H100 PCIe', 'bfloat16'): 756e12,
    ('H100 PCIe', 'float32'): 378e12,
    ('H100 NVL', 'bfloat16'): 835e12,
    ('H100 NVL', 'float32'): 417.5e12,
    ('H100', 'bfloat16'): 989e12,
    ('H100', 'float32'): 494.7e12,
    ('H200 NVL', 'bfloat16'): 835e12,
    ('H200 NVL', 'float32'): 417.5e12,
    ('H200', 'bfloat16'): 989e12,
    ('H200', 'float32'): 494.7e12,
    ('A100', 'bfloat16'): 312e12,
    ('A100', 'float32'): 156e12,
    ('TPU v4 lite', 'bfloat16'): 138e12,
    ('TPU v4', 'bfloat16'): 275e12,
    ('TPU v5 lite', 'bfloat16'): 197e12,
    ('TPU v5', 'bfloat16'): 459e12,
    ('TPU v6 lite', 'bfloat16'): 918e12,
}


def peak_flops(device: jax.Device, dtype: str) -> float | None:
  for (kind, peak_dtype), peak in PEAK_FLOPS.items():
    if kind in device.device_kind and peak_dtype == dtype:
      return peak
  return None


def peak_memory_bytes() -> int:
  """Peak device memory where the backend reports it, else host peak RSS."""
  stats = jax.devices()[0].memory_stats() or {}
  if 'peak_bytes_in_use' in stats:
    return int(stats['peak_bytes_in_use'])
  return budget.peak_host_rss_bytes()


def run_benchmark(config, workdir: str, steps: int) -> dict:
  """Times `steps` train steps of `config`; returns the figures.

  The input pipeline is not what is measured: image datasets are swapped for
  the built-in photos and video datasets for the built-in moving shapes, at
  the same image size (and clip length); the timed steps reuse four batches
  already on the devices.
  """
  config = config.copy_and_resolve_references()
  config.train.checkpoint_every = 0
  if data.kind(config.data.name) == 'video':
    if config.data.name != 'moving_shapes':
      image_size, frames = config.data.image_size, config.data.num_frames
      config.data = data.default_config('moving_shapes')
      config.data.image_size, config.data.num_frames = image_size, frames
  elif config.data.name != 'photos':
    sizes = {
        key: config.data.get(key, 0)
        for key in ('image_size', 'train_image_size')
    }
    config.data = data.default_config('photos')
    config.data.update(sizes)
  exp = experiment.Experiment(config, workdir)
  state, _ = exp.initial_state()
  batches = exp.train_data.batches(0)
  batch = exp.global_batch(next(batches))
  with jax.set_mesh(exp.mesh):
    t0 = time.perf_counter()
    # The program that is right at every step: a tokenizer's GAN terms are
    # computed (times 0) before loss.disc_start too.
    lowered = exp.jitted_train_step().lower(state, batch, exp.frozen)
    compiled = lowered.compile()
    compile_s = time.perf_counter() - t0
    # Model FLOPs from the jaxpr (matmuls and convolutions): XLA's cost
    # analysis misses GPU convolutions, which become cuDNN custom calls.
    jaxpr = jax.make_jaxpr(exp.jitted_train_step())(state, batch,
                                                    exp.frozen).jaxpr
    flops = flops_lib.jaxpr_flops(jaxpr)
    model_flops = flops_lib.jaxpr_flops(jaxpr, recomputation=False)
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    xla_flops = float(cost.get('flops', 0.0)) if cost else 0.0
    for _ in range(2):  # Warm-up.
      state, metrics = compiled(state, batch, exp.frozen)
    jax.block_until_ready(metrics)
    host_batches = [exp.global_batch(next(batches)) for _ in range(4)]
    t0 = time.perf_counter()
    for i in range(steps):
      state, metrics = compiled(state, host_batches[i % len(host_batches)],
                                exp.frozen)
    jax.block_until_ready((state, metrics))
    step_s = (time.perf_counter() - t0) / steps
  device = jax.devices()[0]
  peak = peak_flops(device, config.compute_dtype)
  num_devices = jax.device_count()
  result = {
      'device':
          device.device_kind,
      'num_devices':
          num_devices,
      'compute_dtype':
          config.compute_dtype,
      'global_batch':
          config.train.batch_size,
      # The size the timed steps train on.
      'image_size':
          config.data.get('train_image_size', 0) or config.data.image_size,
      'num_frames':
          config.data.get('num_frames'),
      'compile_s':
          compile_s,
      'step_s':
          step_s,
      'steps_per_s':
          1.0 / step_s,
      'examples_per_s':
          config.train.batch_size / step_s,
      'peak_memory_bytes':
          peak_memory_bytes(),
      'flops_per_step':
          flops,
      'model_flops_per_step':
          model_flops,
      'xla_cost_analysis_flops':
          xla_flops,
      'achieved_tflops':
          flops / step_s / 1e12,
      # Model FLOPs utilization, and hardware FLOPs utilization: with the
      # work that checkpoints (remat) recompute in the backward pass.
      'mfu':
          model_flops / step_s / (peak * num_devices) if peak else None,
      'hfu':
          flops / step_s / (peak * num_devices) if peak else None,
  }
  return result


def main(argv):
  del argv
  result = run_benchmark(_CONFIG.value, _WORKDIR.value, _STEPS.value)
  width = max(len(k) for k in result)
  for key, value in result.items():
    shown = f'{value:.4g}' if isinstance(value, float) else str(value)
    print(f'{key:<{width}}  {shown}')
  if _JSON.value:
    results_json.write(_JSON.value, result)
  sys.stdout.flush()


if __name__ == '__main__':
  flags.mark_flags_as_required(['config'])
  app.run(main)
