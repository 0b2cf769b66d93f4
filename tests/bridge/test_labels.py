"""The torch side refuses labels that are not output indices of the net it attacks or scores.

A one-output (binary) net predicts index 1 where f > 0; given the ±1 targets it was trained on
as labels, its accuracy counted every −1 as wrong and its attacks treated −1 as class 0 without
a word. An out-of-range label of a C-output net is a device-side assert on a GPU."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ntkrobust.attacks import AttackSpec
from ntkrobust.bridge.adversarial import accuracy, adversarial_examples, check_labels
from ntkrobust.bridge.tracking import clean_accuracy, pgd_accuracy

PGD = AttackSpec(method="pgd", eps=0.1, step=0.02, steps=3)


@pytest.fixture
def x():
    return torch.rand(8, 1, 4, 4, generator=torch.Generator().manual_seed(0))


def net(outputs: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, outputs)).eval()


SCORERS = {
    "accuracy": lambda model, x, y: accuracy(model, x, y),
    "clean_accuracy": lambda model, x, y: clean_accuracy(model, x, y),
    "pgd_accuracy": lambda model, x, y: pgd_accuracy(model, x, y, PGD),
    "adversarial_examples": lambda model, x, y: adversarial_examples(
        model, x, y, method="pgd", eps=0.1, step=0.02, steps=3
    ),
}

BAD = {
    "plus-minus one for one output": (1, torch.tensor([1, -1] * 4), "one output: 0 where f < 0, 1 where f > 0"),
    "two for one output": (1, torch.tensor([0, 2] * 4), "indices 0..1 of a net with 1 output"),
    "ten of ten outputs": (10, torch.tensor([0, 10] * 4), "indices 0..9 of a net with 10 output"),
    "negative": (10, torch.tensor([-1, 3] * 4), "got labels from -1 to 3"),
    "float": (10, torch.ones(8), "1D tensor of int output indices, got torch.float32"),
    "one-hot": (10, torch.eye(10)[:8].long(), "shape (8, 10)"),
    "too few": (10, torch.tensor([0, 1] * 3), "6 labels for 8 inputs"),
    "too many": (10, torch.tensor([0, 1] * 5), "10 labels for 8 inputs"),
}


@pytest.mark.parametrize("scorer", SCORERS)
@pytest.mark.parametrize("case", BAD)
def test_labels_that_are_no_output_index_are_refused(x, scorer, case):
    outputs, y, message = BAD[case]
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        SCORERS[scorer](net(outputs), x, y)


@pytest.mark.parametrize("scorer", SCORERS)
@pytest.mark.parametrize(("outputs", "labels"), [(1, [0, 1]), (10, [0, 9]), (10, [3, 3])])
def test_output_indices_pass(x, scorer, outputs, labels):
    SCORERS[scorer](net(outputs), x, torch.tensor(labels * 4))


def test_the_accuracy_of_a_one_output_net_is_the_share_on_the_right_side_of_zero(x):
    model = net(1)
    with torch.no_grad():
        y = (model(x)[:, 0] > 0).long()
    y[:2] = 1 - y[:2]
    assert accuracy(model, x, y) == 6 / 8


def test_no_labels_pass():
    check_labels(torch.zeros(0, dtype=torch.long), 10)
