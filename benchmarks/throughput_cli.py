"""The command line shared by the metric-network throughput benchmarks
(LPIPS, Inception): time vqlab's network or, with `--reference`, the PyTorch
reference package (run under a python that has torch), merge the row into a
JSON file keyed 'vqlab' / 'reference', and print the rows the file holds.

Imports neither jax nor torch: each side imports what it needs lazily.
"""

import argparse
import os
import platform
import time
from typing import Callable

from benchmarks import results_json

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
Runner = Callable[[int, int, int], dict]


def time_calls(call: Callable[[], None], steps: int) -> float:
  """Mean seconds per call of `call()` (which blocks until done)."""
  t0 = time.perf_counter()
  for _ in range(steps):
    call()
  return (time.perf_counter() - t0) / steps


def torch_row(call: Callable[[], None], steps: int,
              implementation: str) -> dict:
  """Times a torch reference `call` (run under torch.no_grad, after two
  warm-up calls) and describes it: a result row for `main`."""
  import torch  # pylint: disable=g-import-not-at-top

  def no_grad_call():
    with torch.no_grad():
      call()

  for _ in range(2):  # Warm-up.
    no_grad_call()
  return {
      'implementation': implementation,
      'torch': torch.__version__,
      'device': f'cpu ({torch.get_num_threads()} threads)',
      'call_s': time_calls(no_grad_call, steps)
  }


def main(description: str, run_vqlab: Runner, run_reference: Runner, *,
         reference_name: str, output_name: str, unit: str) -> None:
  """Parses flags, runs one side as run(batch, image_size, steps) -> row
  dict with 'implementation' and 'call_s', and records it."""
  parser = argparse.ArgumentParser(description=description)
  parser.add_argument('--reference', action='store_true',
                      help=f'Time {reference_name} (torch) instead of vqlab.')
  parser.add_argument('--batch', type=int, default=8, help=f'{unit} per call.')
  parser.add_argument('--image_size', type=int, default=256)
  parser.add_argument('--steps', type=int, default=5, help='Timed calls.')
  parser.add_argument(
      '--output', default=os.path.join(ROOT, 'benchmarks', 'results',
                                       output_name))
  args = parser.parse_args()
  run = run_reference if args.reference else run_vqlab
  result = run(args.batch, args.image_size, args.steps)
  result.update(batch=args.batch, image_size=args.image_size, steps=args.steps,
                host=platform.processor() or platform.node(),
                cpu_count=os.cpu_count(),
                images_per_s=args.batch / result['call_s'])
  rows = results_json.load(args.output)
  rows['reference' if args.reference else 'vqlab'] = result
  results_json.write(args.output, rows)
  print(f'{"row":<10} {"implementation":<26} {"batch":>5} {"size":>5} '
        f'{"s/call":>8} {"images/s":>9}')
  for key, row in rows.items():
    print(f'{key:<10} {row["implementation"]:<26} {row["batch"]:>5} '
          f'{row["image_size"]:>5} {row["call_s"]:>8.3f} '
          f'{row["images_per_s"]:>9.2f}')
