"""XLA options for tests: XLA:CPU spends most of a small test compiling, and
tests check numbers, not speed, so they compile with the cheapest settings."""

FAST_COMPILE = {
    'exec_time_optimization_effort': -1.0,
    'xla_backend_optimization_level': 0,
    'xla_llvm_disable_expensive_passes': True
}


def encode(tokenizer, x):
  """tokenizer.encode(its variables, x) as one compiled program (op by op, a
  video tokenizer's encoder runs for seconds here)."""
  import jax  # pylint: disable=g-import-not-at-top
  return jax.jit(tokenizer.encode,
                 compiler_options=FAST_COMPILE)(tokenizer.variables, x)


def reconstruct(tokenizer, x):
  """tokenizer.decode of tokenizer.encode of x, as one compiled program."""
  import jax  # pylint: disable=g-import-not-at-top
  return jax.jit(lambda v, x: tokenizer.decode(v, tokenizer.encode(v, x)),
                 compiler_options=FAST_COMPILE)(tokenizer.variables, x)


def subprocess_xla_flags(device_count: int) -> str:
  """XLA_FLAGS for a subprocess on `device_count` CPU devices that keeps this
  session's cheap compile settings (tests/conftest.py): a subprocess given
  only the device count compiled at full optimization, twice as long."""
  import os  # pylint: disable=g-import-not-at-top
  import re  # pylint: disable=g-import-not-at-top
  return re.sub(r'--xla_force_host_platform_device_count=\d+',
                f'--xla_force_host_platform_device_count={device_count}',
                os.environ['XLA_FLAGS'])
