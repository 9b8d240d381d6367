"""The quickstart VQGAN (configs/quickstart.py) trained on your images.

  python main.py --config=configs/image_folder.py:/path/to/images \\
      --workdir=workdirs/my_images

The folder holds either train/ and val/ sub-folders of class folders
(train/<class>/<images>, val/<class>/<images>) or just images, in sub-folders
or not, of which 5% (at least one) are held out for eval
(`--config.data.eval_fraction`). JPEG, PNG, GIF and BMP files are read; one
that cannot be decoded stops the run before training with one line naming it,
unless `--config.data.skip_unreadable=True` leaves such files out. Eval on
the held-out images at 64x64, training on 32x32 random resized crops; any key
can be overridden (`--config.data.image_size=128`,
`--config.train.num_steps=5000`). See vqlab/data/image_folder.py.
"""

from configs import quickstart


def get_config(folder: str = ''):
  """`folder`: the text after the ':' of --config (empty: an error when the
  data are built, naming data.path)."""
  return quickstart.use_folder(quickstart.get_config(), folder)
