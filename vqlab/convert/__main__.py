r"""Converts a published checkpoint into a vqlab run directory.

  python -m vqlab.convert <kind> <file> <out_dir> [--option=value ...]
  python -m vqlab.convert taming_vqgan last.ckpt ckpts/taming_f16_16384
  python main.py --config=ckpts/taming_f16_16384/config.py \
      --workdir=ckpts/taming_f16_16384 --mode=eval

A tokenizer's `out_dir` becomes a tokenizer run at step 0 (config.json,
config.py, an Orbax checkpoint): evaluate it with `main.py --mode=eval`,
fine-tune it with `--mode=train`, or name it as `tokenizer.workdir` of a
generator config. A generator's (maskgit_transformer, taming_transformer,
titok_generator) becomes a generator run at step 0 over a converted
tokenizer run (`--tokenizer`): sample it with `main.py --mode=sample`.
`python -m vqlab.convert <kind> --help` lists a kind's options.
"""

import argparse
import importlib
import sys

# kind -> (module under vqlab.convert, what it reads).
KINDS = {
    'taming_vqgan': ('taming_vqgan', 'taming-transformers VQGAN (f16-1024, '
                     'f16-16384) last.ckpt'),
    'maskgit_vqgan': ('maskgit_vqgan', 'MaskGIT VQGAN tokenizer (flax '
                      'checkpoint)'),
    'titok': ('titok', 'TiTok 1D tokenizer (model.safetensors or '
              'pytorch_model.bin)'),
    'open_magvit2': ('open_magvit2', 'Open-MAGVIT2 image tokenizer (.ckpt)'),
    'maskgit_transformer': ('maskgit_transformer', 'MaskGIT class-'
                            'conditional transformer (flax checkpoint), over '
                            'a converted maskgit_vqgan run'),
    'titok_generator': ('titok_generator', 'TiTok-L-32 / B-64 class-'
                        'conditional MaskGIT (model.safetensors or '
                        'generator_titok_*.bin), over a converted titok run'),
    'taming_transformer': ('taming_transformer', 'taming-transformers GPT '
                           '(cin, ffhq, celebahq last.ckpt), over a '
                           'converted taming_vqgan run'),
}


def _parse_bool(text: str) -> bool:
  if text.lower() in ('1', 'true', 'yes'):
    return True
  if text.lower() in ('0', 'false', 'no'):
    return False
  raise argparse.ArgumentTypeError(f'{text!r} is not a boolean')


def _parser(kind: str | None, module) -> argparse.ArgumentParser:
  kinds = '\n'.join(f'  {k:14s} {what}' for k, (_, what) in KINDS.items())
  parser = argparse.ArgumentParser(
      prog='python -m vqlab.convert', description=f'Kinds:\n{kinds}',
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('kind', choices=sorted(KINDS))
  parser.add_argument('file', help='the published checkpoint file')
  parser.add_argument('out_dir', help='the run directory to write')
  if module is not None:
    group = parser.add_argument_group(f'{kind} options')
    for name, (kind_type, default, help_text) in module.OPTIONS.items():
      group.add_argument(f'--{name}', default=default,
                         type=_parse_bool if kind_type is bool else kind_type,
                         help=f'{help_text} (default: {default})')
  return parser


def main(argv: list[str]) -> int:
  """`python -m vqlab.convert KIND SOURCE OUT [flags]`; the exit status."""
  kind = argv[0] if argv and argv[0] in KINDS else None
  module = (importlib.import_module(f'vqlab.convert.{KINDS[kind][0]}')
            if kind else None)
  args = _parser(kind, module).parse_args(argv)
  from vqlab.convert import published  # pylint: disable=g-import-not-at-top
  from vqlab.errors import CheckpointError  # pylint: disable=g-import-not-at-top
  from vqlab.errors import ConfigError  # pylint: disable=g-import-not-at-top
  from vqlab.errors import WeightsError  # pylint: disable=g-import-not-at-top
  options = {name: getattr(args, name) for name in module.OPTIONS}
  try:
    published.check_new_run_dir(args.out_dir)
    converted = module.convert_file(args.file, **options)
    write_run = getattr(module, 'write_run', published.write_run)
    result = write_run(args.out_dir, converted)
  except (WeightsError, ConfigError, CheckpointError, FileExistsError) as e:
    sys.exit(f'convert: {e}')
  print(
      f'vqlab.convert: {result["source"]}: {result["num_params"]:,} params '
      f'-> {result["out_dir"]}\n  next: {result["command"]}', flush=True)
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
