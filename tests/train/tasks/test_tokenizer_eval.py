"""The tokenizer eval suite end to end: PSNR, SSIM, LPIPS, codebook usage and
rFID's feature statistics over several eval batches equal a direct
computation on the same images; `--mode=fid_stats`'s reference statistics;
clear errors for missing weights."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import random_weight_files
from tests import tiny
from tests.compile_options import FAST_COMPILE
from vqlab import data as data_lib
from vqlab.errors import DataError
from vqlab.errors import WeightsError
from vqlab.evals import accumulator
from vqlab.evals import fid
from vqlab.evals import image_metrics
from vqlab.losses import perceptual
from vqlab.nn import inception
from vqlab.train import experiment
from vqlab.train import experiment_config
from vqlab.train import frozen as frozen_lib
from vqlab.train import reference_files
from vqlab.train import reference_stats
from vqlab.train import sampling
from vqlab.train.tasks import reconstruction_eval


@pytest.fixture(scope='module')
def weights_dir(tmp_path_factory):
  return str(
      random_weight_files.write(tmp_path_factory.mktemp('weights'),
                                ('vgg16', 'inception_fid')))


def _config(weights_dir, **eval_overrides):
  # 28x28 images: LPIPS's last VGG convolutions see 3x3 and 1x1 maps; from
  # 16x16 images, 2x2 ones, which XLA:CPU runs about 100x slower per FLOP
  # (seconds per eval batch).
  config = tiny.tokenizer_config(image_size=28)
  config.weights_dir = weights_dir
  # 12 eval tiles of one held-out photo: two eval batches of 8, the second
  # padded, so accumulation across batches and the mask are both exercised.
  config.data.eval_photos = ('chelsea',)
  config.eval.max_batches = -1
  config.eval.lpips = config.eval.fid = 'on'
  config.eval.update(eval_overrides)
  return config


def _direct_metrics(exp, state, num_batches):
  """The suite's numbers computed image by image on the host, in float64."""
  model = exp.task.model
  variables = {'params': state.params['generator'], **state.model_state}
  frozen = exp.task.frozen

  @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
  def per_image(x):
    x_rec, q_out = model.apply(variables, x, train=False)
    x_rec = jnp.clip(x_rec, -1, 1)
    # One Inception in the program, not two (its compile is most of this).
    real, rec = jnp.split(
        inception.InceptionV3().apply({'params': frozen['inception']},
                                      jnp.concatenate([x, x_rec]))['pool'], 2)
    return {
        'psnr': image_metrics.psnr(x, x_rec),
        'ssim': image_metrics.ssim(x, x_rec),
        'lpips': perceptual.lpips_distance(frozen['lpips'], x, x_rec),
        'l1': jnp.mean(jnp.abs(x - x_rec), axis=(1, 2, 3)),
        'real': real,
        'rec': rec,
        'codes': q_out.indices.reshape(-1)
    }

  rows = {k: [] for k in ('psnr', 'ssim', 'lpips', 'l1', 'real', 'rec', 'codes')}
  for i, batch in enumerate(exp.eval_data.batches()):
    if i == num_batches:
      break
    # The whole padded batch (one compile), then its real rows.
    mask = np.asarray(batch['mask'], bool)
    for key, value in per_image(jnp.asarray(batch['image'])).items():
      value = np.asarray(value)
      rows[key].append(value[mask] if key != 'codes' else value.
                       reshape(len(mask), -1)[mask].reshape(-1))
  rows = {
      k: np.concatenate([np.asarray(v, np.float64) for v in vs])
      for k, vs in rows.items()
  }
  counts = np.bincount(rows['codes'].astype(int),
                       minlength=model.quantizer.codebook_size)
  probs = counts[counts > 0] / counts.sum()
  return {
      'psnr': rows['psnr'].mean(),
      'ssim': rows['ssim'].mean(),
      'lpips': rows['lpips'].mean(),
      'l1': rows['l1'].mean(),
      'codebook_usage': float((counts > 0).mean()),
      'codebook_perplexity': np.exp(-np.sum(probs * np.log(probs))),
      'num_examples': len(rows['psnr']),
      'real': rows['real'],
      'rec': rows['rec']
  }


@pytest.mark.usefixtures('small_inception_input')
def test_eval_suite_equals_direct_computation(weights_dir, tmp_path,
                                              monkeypatch):
  # `--mode=fid_stats` on the eval split, then an eval that also reports FID
  # against those statistics.
  path = str(tmp_path / 'stats' / 'fid_stats.npz')
  stats = reference_stats.compute_reference_statistics(_config(weights_dir),
                                                       path)
  exp = experiment.Experiment(_config(weights_dir, fid_reference=path),
                              str(tmp_path / 'run'))
  state, _ = exp.initial_state()
  # rFID and FID against the reference are checked by their arguments below
  # (the distance's value of singular statistics and its symmetry:
  # tests/evals/test_fid.py): no 2048 x 2048 eigensolve.
  distances, frechet = [], fid.frechet_distance
  monkeypatch.setattr(
      fid, 'frechet_distance',
      lambda *stats: distances.append(stats) or 1.5 + len(distances))
  # Each eval batch's images as the eval step left them (checked below; an
  # eval step runs LPIPS and Inception, seconds of CPU: none is rerun).
  step_images, eval_step = [], exp.eval_step

  def recording_eval_step(*args):
    outputs, batch_images = eval_step(*args)
    step_images.append(batch_images)
    return outputs, batch_images

  monkeypatch.setattr(exp, 'eval_step', recording_eval_step)
  metrics, images = exp.evaluate(state)
  monkeypatch.setattr(fid, 'frechet_distance', frechet)
  want = _direct_metrics(exp, state, num_batches=-1)

  assert metrics['num_examples'] == want['num_examples'] == 12
  for key in ('psnr', 'ssim', 'lpips', 'l1', 'codebook_usage'):
    np.testing.assert_allclose(metrics[key], want[key], rtol=1e-5, err_msg=key)
  # In float64: float32 is off in the 7th digit.
  np.testing.assert_allclose(metrics['codebook_perplexity'],
                             want['codebook_perplexity'], rtol=1e-12)
  # The eval step's images stay split over the 8 devices (an example each);
  # only the grid's 4 examples of the first batch come to the host.
  first = next(iter(exp.eval_data.batches()))
  assert len(step_images) == 2
  sharded = step_images[0]
  for key in ('inputs', 'reconstructions'):
    assert [s.data.shape[0] for s in sharded[key].addressable_shards] == [1] * 8
    np.testing.assert_array_equal(images[key], np.asarray(sharded[key])[:4])
  np.testing.assert_array_equal(images['inputs'], first['image'][:4])

  mu, sigma = fid.load_statistics(path)
  assert stats.num_examples == 12
  np.testing.assert_allclose(mu, want['real'].mean(0), atol=1e-4)
  np.testing.assert_allclose(sigma, np.cov(want['real'], rowvar=False),
                             atol=1e-4)
  # The reference is the eval split's real images: FID against it is rFID,
  # the distance of the reconstructions' statistics to the reference's.
  (real_mu, real_sigma, rec_mu, rec_sigma), reference_args = distances
  assert metrics['rfid'] == 2.5 and metrics['fid_reference'] == 3.5
  # rFID: the real and reconstructed features of all 12 examples.
  np.testing.assert_allclose(rec_mu, want['rec'].mean(0), atol=1e-4)
  np.testing.assert_allclose(rec_sigma, np.cov(want['rec'], rowvar=False),
                             atol=1e-4)
  for got, want_arg in zip(reference_args, (rec_mu, rec_sigma, mu, sigma)):
    np.testing.assert_array_equal(got, want_arg)
  np.testing.assert_allclose(mu, real_mu, atol=1e-5)
  np.testing.assert_allclose(sigma, real_sigma, atol=1e-5)

  # Sampling's cached reference (WORKDIR/fid_stats.npz) is reused for the
  # data settings it was computed from, and recomputed for others.
  computed = []
  compute = reference_stats.compute_reference_statistics
  monkeypatch.setattr(reference_stats, 'compute_reference_statistics',
                      lambda *a, **k: computed.append(1) or compute(*a, **k))
  config = experiment_config.validate(_config(weights_dir), jax.device_count())
  reference = lambda c: sampling._reference(c, str(tmp_path / 'stats'),
                                            'inception', None)[0]
  np.testing.assert_array_equal(reference(config), mu)
  assert not computed
  config.data.eval_photos = ('coffee',)
  assert np.abs(reference(config) - mu).max() > 1e-3 and len(computed) == 1
  assert fid.statistics_source(path) == reference_files.source(
      config, 'inception')


def test_missing_weight_files_are_named(tmp_path, capsys):
  config = _config(str(tmp_path / 'empty'))
  with pytest.raises(WeightsError,
                     match='pt_inception-2015-12-05-6726825d.pth'):
    experiment.Experiment(config, str(tmp_path / 'run'))
  config.eval.fid = 'off'
  with pytest.raises(WeightsError, match=r'vgg16-397923af.pth .*empty'):
    experiment.Experiment(config, str(tmp_path / 'run'))
  config.eval.lpips = 'auto'  # Absent files under 'auto': skipped, once said.
  exp = experiment.Experiment(config, str(tmp_path / 'run'))
  assert exp.task.frozen == {}
  assert capsys.readouterr().out == (
      "vqlab: lpips is left out (its mode is 'auto'): no vgg16-397923af.pth "
      f"in {tmp_path / 'empty'} (README: Pretrained metric networks)\n")


def test_auto_weights_are_wanted_only_where_every_process_has_them(
    weights_dir, monkeypatch, capsys):
  """On several hosts, 'auto' follows the host that lacks the files: hosts
  that decided apart built different programs and failed in their first
  collective (a gloo size mismatch naming no weight file)."""
  assert frozen_lib.wanted('inception', 'auto', weights_dir)
  gathered = []

  def allgather(present):
    gathered.append(int(present))
    return np.array([int(present), 0])  # Process 1 lacks the file.

  monkeypatch.setattr(jax, 'process_count', lambda: 2)
  monkeypatch.setattr(frozen_lib.multihost_utils, 'process_allgather',
                      allgather)
  assert not frozen_lib.wanted('inception', 'auto', weights_dir)
  assert gathered == [1]
  assert ('processes [1] lack pt_inception-2015-12-05-6726825d.pth in'
          in capsys.readouterr().out)
  assert frozen_lib.wanted('inception', 'on', weights_dir)  # Not gathered.
  assert gathered == [1]


@pytest.mark.usefixtures('small_inception_input')
def test_gray_images_get_rfid_and_one_example_gets_none(weights_dir,
                                                        monkeypatch):
  """Inception sees a gray image as RGB with three equal channels (a
  1-channel dataset's eval used to fail at its first eval); one eval example
  has no covariance, so no rFID, and the other metrics still come.

  The rFID is the Frechet distance of the real and reconstructed features'
  statistics: its arguments are checked here, its value (two 2048 x 2048
  eigendecompositions, most of this test's time) in tests/evals/test_fid.py
  (singular statistics too)."""
  frozen = frozen_lib.load(['inception'], weights_dir)
  evaluation = reconstruction_eval.ReconstructionEval(codebook_size=8)
  x = jax.random.uniform(jax.random.key(0), (3, 16, 16, 1), minval=-1, maxval=1)
  x_rec = x * 0.9
  indices = jnp.zeros((3, 4, 4), jnp.int32)

  # One compiled program (op by op, Inception dispatches for half a minute).
  @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
  def outputs_and_rgb_pool(frozen):
    outputs, _ = evaluation.outputs(x, x_rec, indices, jnp.ones(3), frozen)
    return outputs, inception.InceptionV3().apply(
        {'params': frozen['inception']}, jnp.repeat(x, 3, axis=-1))['pool']

  outputs, rgb_pool = outputs_and_rgb_pool(frozen)
  np.testing.assert_allclose(outputs['features']['real'], rgb_pool, rtol=1e-5,
                             atol=1e-6)
  distances = []
  monkeypatch.setattr(fid, 'frechet_distance',
                      lambda *stats: distances.append(stats) or 1.5)
  for real_examples, has_rfid in ((3, True), (1, False)):
    acc = accumulator.EvalAccumulator()
    acc.add(dict(outputs, feature_mask=jnp.arange(3) < real_examples))
    metrics = evaluation.summarize(acc)
    assert ('rfid' in metrics) == has_rfid
    assert metrics.get('rfid', 1.5) == 1.5
    assert metrics['psnr'] > 20
  (mu1, sigma1, mu2, sigma2), = distances
  for mu, sigma, features in ((mu1, sigma1, rgb_pool),
                              (mu2, sigma2,
                               outputs['features']['reconstructed'])):
    features = np.asarray(features, np.float64)
    np.testing.assert_allclose(mu, features.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(sigma, np.cov(features, rowvar=False), rtol=1e-4,
                               atol=1e-6)


def test_reference_statistics_of_missing_data_are_a_data_error(
    weights_dir, tmp_path):
  """`--mode=fid_stats` on a folder that is not there: one line naming
  data.path (it was a traceback ending in FileNotFoundError)."""
  config = _config(weights_dir)
  config.data = data_lib.default_config('image_folder')
  config.data.update(path=str(tmp_path / 'missing'), image_size=16)
  with pytest.raises(DataError, match='data.path'):
    reference_stats.compute_reference_statistics(config,
                                                 str(tmp_path / 'stats.npz'))
