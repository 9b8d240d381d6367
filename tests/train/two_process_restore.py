"""One of two processes of tests/train/test_faults.py's restore test.

  python two_process_restore.py PROCESS PORT WORKDIR

Restores the test's checkpoints (steps 2 and 4 of w = arange(6) * step)
sharded over both processes, with process 1 alone unable to read step 4 (as
a corrupt shard only it reads), and prints 'restored <step> <values>'.
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
  checkpointer = checkpoint_lib.Checkpointer(workdir, max_to_keep=5)
  if process == 1:
    read = ocp.StandardCheckpointHandler.restore

    def fail_at_step_4(self, directory, *args, **kwargs):
      if directory.parent.name == '4':
        raise ValueError('corrupt shard (process 1 only)')
      return read(self, directory, *args, **kwargs)

    ocp.StandardCheckpointHandler.restore = fail_at_step_4
  abstract = {'w': jax.ShapeDtypeStruct((6,), np.float32, sharding=sharding)}
  state, step = checkpointer.restore(abstract)
  local = [s.data for s in state['w'].addressable_shards]
  print('restored', step, np.concatenate(local).tolist(), flush=True)


if __name__ == '__main__':
  main(int(sys.argv[1]), sys.argv[2], sys.argv[3])
