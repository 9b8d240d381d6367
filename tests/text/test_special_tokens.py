from vqlab.text.special_tokens import split_special


def test_special_tokens_are_split_off_leftmost_first():
  chunks = split_special('a[SEP][CLS] b[SEP', ('[CLS]', '[SEP]'))
  assert chunks == [('a', False), ('[SEP]', True), ('[CLS]', True),
                    (' b[SEP', False)]
  # At one position the first token listed wins, not the longest.
  chunks = split_special('<|endoftext|>x', ('<|end', '<|endoftext|>'))
  assert chunks == [('<|end', True), ('oftext|>x', False)]
  assert split_special('', ('[SEP]',)) == []
  assert split_special('[sep]', ('[SEP]',)) == [('[sep]', False)]
