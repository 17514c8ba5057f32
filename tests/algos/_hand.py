"""Hand-computation helpers shared by the loss tests (python floats, independent of lcray)."""

import math

import torch


def t(*xs, grad=False):
    return torch.tensor(xs, dtype=torch.float64, requires_grad=grad)


def neg_log_sigmoid(x: float) -> float:
    """-log(1 / (1 + e^-x)), written out on python floats."""
    return math.log(1.0 + math.exp(-x))


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))
