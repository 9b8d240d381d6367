"""`--config=tests/tiny_tokenizer_config.py`: the tiny VQGAN for main.py tests."""

from tests import tiny


def get_config():
  return tiny.tokenizer_config(steps=5)
