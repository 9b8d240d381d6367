"""Tests of the generator interface's own checks."""

import pytest

from vqlab.generators import api


@pytest.mark.parametrize('kind', api.CONDITION_KINDS)
def test_condition_spec_takes_each_kind(kind):
  assert api.ConditionSpec(kind).kind == kind


def test_condition_spec_names_an_unknown_kind():
  with pytest.raises(ValueError, match=r"ConditionSpec.kind: .*'label'"):
    api.ConditionSpec('label')
