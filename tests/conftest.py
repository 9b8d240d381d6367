"""Test setup: 8 virtual CPU devices, so sharding is tested without TPUs."""

import gc
import os
import tempfile

# Must happen before jax is imported anywhere.
# Tests check numbers, not speed: XLA:CPU spends most of a small test
# compiling, so every compile (subprocesses included) uses the cheap LLVM
# settings (about 20% less CPU time for the suite) and XLA:CPU's older
# fusion emitters (30-40% less compile time than its MLIR ones for the tiny
# train steps: benchmarks/paper_scale.py --tiny --compile_only).
os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=8'
                           ' --xla_backend_optimization_level=0'
                           ' --xla_llvm_disable_expensive_passes=true'
                           ' --xla_cpu_use_fusion_emitters=false')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')  # As main.py.
# The partitionable threefry takes XLA:CPU ~5x longer to compile (a flax init
# of a small model: 20 s instead of 4 s). Tests care about compile time, not
# about which (equally valid) random bits are drawn. Set through the
# environment so that subprocesses (main.py runs) draw the same bits.
os.environ['JAX_THREEFRY_PARTITIONABLE'] = 'false'
# Many tests (and their main.py subprocesses) compile the same tiny programs:
# a persistent compilation cache shared by the pytest workers of one session
# compiles each once. Outside a session (no PYTEST_XDIST_TESTRUNUID: a single
# process) the cache lives and dies with the process' own temp dir name.
os.environ.setdefault(
    'JAX_COMPILATION_CACHE_DIR',
    os.path.join(
        tempfile.gettempdir(), 'vqlab_test_jax_cache_' +
        os.environ.get('PYTEST_XDIST_TESTRUNUID', str(os.getpid()))))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.2')

import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position

# Tracing allocates millions of short-lived objects beside the large heap
# that jax's caches keep alive: at CPython's default thresholds (700, 10, 10)
# the collector ran thousands of times per module, its full passes over that
# heap a fifth of a train-loop test's CPU time (tests/train/test_loop.py and
# test_generator_pipeline.py: 24 s of GC in 100 s of CPU; 4 s at these, for
# 8% more peak memory).
gc.set_threshold(10_000, 20, 100)


@pytest.fixture(scope='session')
def tokenizer_dir(tmp_path_factory):
  """A tiny tokenizer run (config.json + an untrained checkpoint) shared by
  the stage-2 tests of one worker: 16x16 images -> 8x8 tokens of 32 codes."""
  import jax  # pylint: disable=g-import-not-at-top

  from tests import tiny  # pylint: disable=g-import-not-at-top
  return tiny.tokenizer_run(str(tmp_path_factory.mktemp('tokenizer')),
                            jax.devices()[:2])


@pytest.fixture
def small_inception_input(monkeypatch):
  """InceptionV3 at its smallest input, 75x75, instead of FID's 299x299, for
  tests that compare two computations through the same network (where the
  size does not matter and 299 costs 16x the FLOPs). The Inception parity
  tests keep 299."""
  from vqlab.nn import inception  # pylint: disable=g-import-not-at-top
  from vqlab.train import sampling  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(inception, 'INPUT_SIZE', 75)
  # A program traced at the other size must not be reused.
  sampling.inception_outputs.clear_cache()
  yield
  sampling.inception_outputs.clear_cache()


@pytest.fixture(scope='module')
def one_tokenizer_load_per_module():
  """trained_tokenizer.load cached for a module's tests: each tokenizer run
  (and step) is loaded once, not once per generator build, sampling and test
  (Orbax's restore is a load's time, about 1 s). For modules whose tests
  change no tokenizer run on disk."""
  import functools  # pylint: disable=g-import-not-at-top

  from vqlab.train import trained_tokenizer  # pylint: disable=g-import-not-at-top
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(trained_tokenizer, 'load',
                  functools.cache(trained_tokenizer.load))
    yield
