"""THE train loop. It knows nothing about models: a task supplies pure
`init`, `train_step`, `eval_step`; the loop owns the mesh, the data, the
checkpoints, the writers, the progress line and preemption.

Reads top to bottom: setup, state (restore or init), compiled steps, the loop.
"""

import collections
import contextlib
import itertools
import json
import os
import time
from typing import Any, Callable, Iterable, Iterator, TypeVar

from absl import logging
import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np

from vqlab import fileio
from vqlab.train import checkpoint as checkpoint_lib
from vqlab.train import experiment
from vqlab.train import preemption
from vqlab.train import progress as progress_lib
from vqlab.train import run_record
from vqlab.train import workdir_lock
from vqlab.train import writers as writers_lib

StepCallback = Callable[[int, dict[str, Any]], None]
_clock = time.perf_counter  # Of steps_per_sec (a test's fake clock).
_T = TypeVar('_T')
_U = TypeVar('_U')


def _prefetched(items: Iterable[_T], put: Callable[[_T], _U],
                size: int = 1) -> Iterator[_U]:
  """Yields `put(item)` for each of `items` in order, `size` items ahead.

  When the consumer receives `put(items[i])`, `put` has already been called on
  items i+1 .. i+size (fewer at the end), and nothing past them was pulled.
  In the loop `put` is `Experiment.global_batch`, an async device_put of a
  host batch {key: [b, ...]} into global arrays [B, ...] sharded on the batch
  axis, so the next batch's transfer runs while the current step does.
  """
  queue = collections.deque()
  for item in items:
    queue.append(put(item))
    if len(queue) > size:
      yield queue.popleft()
  while queue:
    yield queue.popleft()


def _write_eval(writer, exp: experiment.Experiment, step: int, metrics, images,
                changes: dict[str, tuple] | None = None) -> None:
  """The eval of `step`: TensorBoard scalars and grid (`writer`), the grid's
  PNG and eval_<step>.json. With `changes` (an eval under a config that
  differs from the run's record: other data, fewer eval batches; `writer`
  then None) the numbers go beside the run's own, into
  eval_<step>_changed.json with the changes and images/ with its grid."""
  grid = writers_lib.image_grid(
      exp.task.image_rows(images, exp.config.eval.num_images))
  if not changes:
    writer.write_scalars(step, {f'eval/{k}': v for k, v in metrics.items()})
    kind = 'eval_samples' if 'samples' in images else 'eval_reconstructions'
    writer.write_images(step, {kind: grid})
  if jax.process_index() != 0:
    return
  record, name, under = {'step': step, **metrics}, f'eval_{step}.json', ''
  if changes:
    name = run_record.unused_name(exp.workdir, f'eval_{step}_changed')
    record['config_changes'] = {k: list(v) for k, v in changes.items()}
    under = f' under the changed config ({run_record.describe(changes)})'
    picture = os.path.join(exp.workdir, 'images', name[:-len('.json')] + '.png')
    fileio.makedirs(os.path.dirname(picture))
    writers_lib.save_png(picture, grid)
  with fileio.open(os.path.join(exp.workdir, name), 'w') as f:
    f.write(writers_lib.as_json(record, indent=2))
  print(
      f'vqlab: eval at step {step}{under}: ' +
      ' '.join(f'{k}={v:.4g}' for k, v in metrics.items()) +
      (f'; written to {name}' if changes else ''), flush=True)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       devices: list[jax.Device] | None = None,
                       step_callback: StepCallback | None = None,
                       allow_config_change: bool = False) -> dict[str, Any]:
  """Trains `config` in `workdir`, resuming from its latest checkpoint.

  SIGTERM (preemption) and Ctrl-C (SIGINT) at any point save the current step
  once it is done and return; a second Ctrl-C aborts without saving.

  Args:
    config: an experiment config (see vqlab.train.experiment_config).
    workdir: everything the run writes goes here.
    devices: devices of the mesh (default: all).
    step_callback: called as f(step, metrics) after every step, metrics
      still on device (the Colab notebooks redraw their live loss plot here).
    allow_config_change: continue a run in `workdir` whose config.json
      differs from `config` (the old one is kept beside it).

  Returns:
    {'step', 'preempted', plus the final eval metrics unless preempted}.
  """
  with preemption.PreemptionWatcher() as watcher:
    return _train(config, workdir, devices, step_callback, allow_config_change,
                  watcher)


def _stopped(step: int, saved: bool) -> dict[str, Any]:
  what = (f'checkpoint saved at step {step}'
          if saved else 'stopped before the first step; nothing new to save')
  print(f'vqlab: interrupted; {what}', flush=True)
  return {'step': step, 'preempted': True}


def _train(config, workdir, devices, step_callback, allow_config_change,
           watcher: preemption.PreemptionWatcher) -> dict[str, Any]:
  """train_and_evaluate under its signal watcher."""
  with workdir_lock.held(workdir):  # Released once the saves landed.
    exp = experiment.Experiment(config, workdir, devices,
                                allow_config_change=allow_config_change,
                                lock='train')
    with contextlib.ExitStack() as closing, _saves_landing(exp.checkpointer):
      return _train_experiment(exp, workdir, step_callback, watcher, closing)


def _closing_exit(close: Callable[[], None]):
  """An ExitStack exit that calls `close`. Its error while another one
  leaves is one line, and the first error is the one raised (a full disk
  fails the checkpoint's save, then TensorBoard's flush)."""

  def exit_(exc_type, exc, traceback) -> bool:
    del exc_type, traceback
    try:
      close()
    except Exception as e:  # pylint: disable=broad-except
      if exc is None:
        raise
      print(f'vqlab: while stopping: {type(e).__name__}: {e}', flush=True)
    return False

  return exit_


@contextlib.contextmanager
def _saves_landing(checkpointer) -> Iterator[None]:
  """On an exception (a failed eval right after a save, a data error), the
  async save in flight is finished before it propagates: at the
  interpreter's exit Orbax could no longer commit it, and the step was lost
  as its temporary directory. A second Ctrl-C leaves at once."""
  try:
    yield
  except KeyboardInterrupt:
    raise
  except BaseException:
    try:
      checkpointer.wait()
      checkpointer.close()
    except Exception as e:  # pylint: disable=broad-except
      print(f'vqlab: {e}', flush=True)  # The first error is the one raised.
    raise


def _train_experiment(exp: experiment.Experiment, workdir: str,
                      step_callback: StepCallback | None,
                      watcher: preemption.PreemptionWatcher,
                      closing: contextlib.ExitStack) -> dict[str, Any]:
  """_train's run of its Experiment; `closing` closes what it opens
  however it ends (an error, a second Ctrl-C: main.py then leaves without
  the interpreter's exit, which would have flushed TensorBoard's events)."""
  config = exp.config
  train_cfg = config.train
  state, start_step = exp.initial_state()
  exp.checkpointer.check_writable()
  finished = (_final_metrics(workdir, start_step)
              if start_step >= train_cfg.num_steps else None)
  if finished is not None:
    if jax.process_index() == 0:
      print(
          f'vqlab: the run finished at step {start_step} (its '
          'final_metrics.json); nothing to train. --mode=eval evaluates its '
          'checkpoint again; a larger --config.train.num_steps trains on '
          '(with --allow_config_change where the learning rate decays over '
          'the run).', flush=True)
    exp.checkpointer.close()
    return finished
  if start_step:
    logging.info('Resuming from step %d', start_step)
    if jax.process_index() == 0:
      print(f'vqlab: resuming from the checkpoint at step {start_step}',
            flush=True)
  if watcher.should_stop():
    exp.checkpointer.close()
    return _stopped(start_step, saved=False)
  # Recorded once the run goes on: a finished or stopped one trains nothing
  # under a changed config, so its record stays as it was.
  exp.record_config(start_step)
  eval_missing = _eval_missing(workdir, start_step, train_cfg)
  writer = writers_lib.MetricWriter(
      workdir, trains_from=start_step,
      evaluates_again=start_step >= train_cfg.num_steps or eval_missing)
  closing.push(_closing_exit(writer.close))
  is_chief = jax.process_index() == 0
  if is_chief:
    print(
        f'vqlab: {jax.process_count()} processes, {jax.device_count()} '
        f'devices, mesh {dict(exp.mesh.shape)}', flush=True)
  progress = progress_lib.Progress(start_step, train_cfg.num_steps,
                                   train_cfg.batch_size, enabled=is_chief)
  # Step s+1's batch goes to the devices before step s is waited on; exactly
  # the batches of the steps left are read (none past num_steps).
  batches = _prefetched(
      itertools.islice(exp.train_data.batches(start_step),
                       max(train_cfg.num_steps - start_step, 0)),
      exp.global_batch)
  last_saved = start_step
  # The train rate's clock: stopped while evals run; the first interval
  # (which compiled the step) gives no rate.
  t_log, step_log, eval_s = _clock(), start_step, 0.0

  def save(step, force=False) -> bool:
    saved = exp.checkpointer.save(step, state, force=force)
    if saved:
      writer.flush_rows()
      if is_chief:
        print(f'vqlab: saving the checkpoint of step {step}', flush=True)
    return saved

  with jax.set_mesh(exp.mesh):
    if eval_missing:
      _write_eval(writer, exp, start_step, *exp.evaluate(state))
    for step, batch in zip(range(start_step + 1, train_cfg.num_steps + 1),
                           batches):
      # `step` counts steps done once this one finishes.
      state, metrics = exp.train_step(state, batch, step - 1)
      if step_callback is not None:
        step_callback(step, metrics)
      if step % train_cfg.log_every == 0 or step == start_step + 1:
        metrics = jax.device_get(metrics)
        now = _clock()
        if step_log > start_step:
          rate = (step - step_log) / max(now - t_log - eval_s, 1e-9)
          metrics = {
              **metrics, 'steps_per_sec': rate,
              'examples_per_sec': rate * train_cfg.batch_size
          }
        t_log, step_log, eval_s = now, step, 0.0
        writer.write_scalars(step, metrics)
        _check_finite(exp, step, metrics)
        progress.update(
            step, {k: metrics[k] for k in ('loss', 'rec_loss') if k in metrics})
      if (train_cfg.checkpoint_every and
          step % train_cfg.checkpoint_every == 0 and
          step != train_cfg.num_steps):
        if save(step):
          last_saved = step
      eval_due = (train_cfg.eval_every and step % train_cfg.eval_every == 0 and
                  step != train_cfg.num_steps)
      # A SIGTERM skips the eval (a long FID eval could outlast the notice);
      # one that comes during the eval is seen right after it. So on several
      # hosts an eval step is always a check step (all know it is one).
      check_every = 1 if eval_due else train_cfg.preemption_check_every
      stop = watcher.should_stop(step, every=check_every)
      if not stop and eval_due:
        eval_start = _clock()
        _write_eval(writer, exp, step, *exp.evaluate(state))
        eval_s += _clock() - eval_start
        stop = watcher.should_stop(step, every=check_every)
      if stop:
        # Preemption: save this exact step and leave; a restart resumes here.
        if step != last_saved:
          save(step, force=True)
        exp.checkpointer.wait()
        exp.checkpointer.close()
        progress.close()
        writer.close()
        return _stopped(step, saved=True)

  progress.close()
  final_step = max(train_cfg.num_steps, start_step)
  if final_step not in exp.checkpointer.all_steps():
    save(final_step, force=True)
  # On disk before the final eval, so a signal during the eval loses nothing.
  exp.checkpointer.wait()
  if watcher.should_stop():
    exp.checkpointer.close()
    writer.close()
    return _stopped(final_step, saved=True)
  metrics, images = exp.evaluate(state)
  _write_eval(writer, exp, final_step, metrics, images)
  exp.checkpointer.close()
  writer.close()
  result = {'step': final_step, 'preempted': False, **metrics}
  if is_chief:  # Never seen half written (the run would seem unfinished).
    text = writers_lib.as_json(result, indent=2)
    fileio.write_atomically(os.path.join(workdir, 'final_metrics.json'),
                            lambda f: f.write(text.encode()))
  return result


def _check_finite(exp: experiment.Experiment, step: int,
                  metrics: dict[str, Any]) -> None:
  """Stops a run whose train metrics of `step` (on the host) hold a NaN or
  Inf: it diverged, and trained on would save nothing but NaN (the save
  refuses a non-finite state: checkpoint.Checkpointer.save).

  Raises:
    TrainingDivergedError: naming the metrics and the checkpoint kept.
  """
  bad = {k: float(v) for k, v in metrics.items() if not np.isfinite(v)}
  if bad:
    shown = ', '.join(f'{k}={v}' for k, v in sorted(bad.items()))
    raise exp.checkpointer.diverged(f'the train metrics of step {step} are '
                                    f'not finite ({shown})')


def _eval_missing(workdir: str, step: int, train_cfg) -> bool:
  """Whether a run resumed from `step`, an eval step before its last, lacks
  that step's eval (its row in metrics.jsonl, or eval_<step>.json): a stop
  there skips the eval and a crash may cut it short. An eval_<step>.json of
  `--mode=eval` is not the run's: metrics.jsonl lacks its row. Process 0
  looks; every process gets its answer."""
  if not (0 < step < train_cfg.num_steps and train_cfg.eval_every and
          step % train_cfg.eval_every == 0):
    return False
  missing = jax.process_index() == 0 and not (
      writers_lib.has_eval_row(workdir, step) and
      fileio.exists(os.path.join(workdir, f'eval_{step}.json')))
  if jax.process_count() > 1:
    missing = bool(multihost_utils.broadcast_one_to_all(np.int32(missing)))
  return missing


def _final_metrics(workdir: str, step: int) -> dict[str, Any] | None:
  """The final metrics a finished run wrote at `step`, or None (none, of
  another step, or unreadable: the final eval runs again). Process 0 reads
  them and every process gets them, so all of them go on together and
  return what one process would."""
  path = os.path.join(workdir, 'final_metrics.json')
  result = None
  if jax.process_index() == 0:
    try:
      with fileio.open(path) as f:
        result = json.load(f)
    except (OSError, ValueError):
      pass
    if not isinstance(result, dict) or result.get('step') != step:
      result = None
  if jax.process_count() > 1:
    # Process 0's dict as JSON bytes; the others send a buffer of its size.
    text = np.frombuffer(json.dumps(result).encode(), np.uint8)
    size = int(multihost_utils.broadcast_one_to_all(np.int32(text.size)))
    if jax.process_index():
      text = np.zeros((size,), np.uint8)
    result = json.loads(
        np.asarray(multihost_utils.broadcast_one_to_all(text)).tobytes())
  return result


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str, *,
                        devices: list[jax.Device] | None = None,
                        allow_config_change: bool = False) -> dict[str, Any]:
  """`--mode=eval`: restores the latest checkpoint (or `eval.step`'s) and
  evaluates it (the run's config.json is compared with `config`, never
  rewritten)."""
  no_checkpoint = checkpoint_lib.no_checkpoint_error(workdir)
  if checkpoint_lib.newest_step(workdir) is None:
    raise no_checkpoint  # Before anything is made in a mistyped --workdir.
  # No train data: a generator's train token shards (and their memory), a
  # video folder's train files probed, a batch of train clips read.
  exp = experiment.Experiment(config, workdir, devices,
                              allow_config_change=allow_config_change,
                              trains=False)
  restored = exp.checkpointer.restore(exp.abstract_state, set_aside=False,
                                      step=exp.config.eval.step)
  if restored is None:
    raise no_checkpoint
  state, step = restored
  metrics, images = exp.evaluate(state)
  changes = {
      **exp.config_changes,
      **run_record.eval_differences(exp.workdir, exp.config)
  }
  writer = None if changes else writers_lib.MetricWriter(workdir, jsonl=False)
  _write_eval(writer, exp, step, metrics, images, changes)
  if writer is not None:
    writer.close()
  return {'step': step, **metrics}
