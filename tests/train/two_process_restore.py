"""One of two processes of tests/train/test_faults.py's restore test.

  python two_process_restore.py PROCESS PORT WORKDIR

Restores the test's checkpoints (steps 2 and 4 of w = arange(6) * step)
sharded over both processes twice. First process 1 alone is denied step 4's
metadata file (a transient read: both refuse, printing 'refused'; the
checksums' collectives must not leave process 0 waiting). Then process 1
alone cannot read step 4's data (as a corrupt shard only it reads): both
print 'restored <step> <values>'. Last, both read the newest readable step as
another run's (a tokenizer's, a warm start's) and put it on the mesh
spanning them: 'copied <step> <values>'.
"""

import sys

import jax

jax.config.update('jax_cpu_collectives_implementation', 'gloo')


def main(process: int, port: str, workdir: str) -> None:
  jax.distributed.initialize(f'localhost:{port}', 2, process)
  import numpy as np  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  from vqlab.train import checkpoint as checkpoint_lib  # pylint: disable=g-import-not-at-top
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ('x',))
  sharding = jax.sharding.NamedSharding(mesh, jax.P('x'))
  abstract = {'w': jax.ShapeDtypeStruct((6,), np.float32, sharding=sharding)}
  checkpointer = checkpoint_lib.Checkpointer(workdir, max_to_keep=5)
  saved_checksums = checkpoint_lib._saved_checksums  # pylint: disable=protected-access
  if process == 1:

    def denied_at_step_4(manager, step):
      if step == 4:
        raise PermissionError('[Errno 13] Permission denied (process 1 only)')
      return saved_checksums(manager, step)

    checkpoint_lib._saved_checksums = denied_at_step_4  # pylint: disable=protected-access
  try:
    checkpointer.restore(abstract)
  except checkpoint_lib.CheckpointError as e:
    print('refused', e, flush=True)
  checkpoint_lib._saved_checksums = saved_checksums  # pylint: disable=protected-access
  if process == 1:
    read = ocp.StandardCheckpointHandler.restore

    def fail_at_step_4(self, directory, *args, **kwargs):
      if directory.parent.name == '4':
        raise ValueError('corrupt shard (process 1 only)')
      return read(self, directory, *args, **kwargs)

    ocp.StandardCheckpointHandler.restore = fail_at_step_4
  state, step = checkpointer.restore(abstract)
  local = [s.data for s in state['w'].addressable_shards]
  print('restored', step, np.concatenate(local).tolist(), flush=True)
  tree, step = checkpoint_lib.restore_on_host(workdir)
  copied = jax.device_put(tree['w'], sharding)  # As Experiment's warm start.
  local = [s.data for s in copied.addressable_shards]
  print('copied', step, np.concatenate(local).tolist(), flush=True)


if __name__ == '__main__':
  main(int(sys.argv[1]), sys.argv[2], sys.argv[3])
