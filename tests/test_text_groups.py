"""TextGroups (CSR lists of text ids) and the group mean of line channels."""

from __future__ import annotations

import pytest
import torch

from naics_ml.model.text_groups import TextGroups, group_mean, split_lines


def test_split_lines_drops_blank_lines_and_spaces():
    assert split_lines("  pet food \n\n kibble\n ") == ["pet food", "kibble"]


def test_gather_returns_members_and_owners_in_request_order():
    groups = TextGroups.build([[0], [1, 2, 3], [4, 1]])
    assert len(groups) == 3
    members, owner = groups.gather(torch.tensor([2, 0, 1]))
    assert members.tolist() == [4, 1, 0, 1, 2, 3]
    assert owner.tolist() == [0, 0, 1, 2, 2, 2]
    with pytest.raises(ValueError, match="at least one"):
        TextGroups.build([[0], []])


def test_group_mean_normalises_several_and_keeps_single_members():
    vectors = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    out = group_mean(vectors, torch.tensor([0, 0, 1]), 2)
    torch.testing.assert_close(out[0], torch.tensor([2**-0.5, 2**-0.5]))
    assert torch.equal(out[1], vectors[2])  # bit-exact: single-text slots are unchanged
