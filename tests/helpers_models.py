"""Models importable by path in test_models (``helpers_models:TinyNet``)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:  # never imported: typing.get_type_hints cannot resolve annotations using it
    from no_such_typing_pkg import Options


class TinyNet(nn.Module):
    """A linear model that records the arguments it was built with."""

    def __init__(self, input_shape, num_classes, width: int = 8):
        super().__init__()
        self.got = {"input_shape": input_shape, "num_classes": num_classes, "width": width}
        self.body = nn.Linear(math.prod(input_shape), width)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.body(x.flatten(1))))


def fixed_net(width: int = 4) -> nn.Module:
    """A factory that takes neither input_shape nor num_classes."""
    return nn.Sequential(nn.Linear(3, width), nn.ReLU(), nn.Linear(width, 2))


def kwargs_net(**kwargs) -> nn.Module:
    """A factory that takes anything; keeps what it got."""
    m = nn.Linear(2, 2)
    m.got = kwargs
    return m


def not_a_module(input_shape, num_classes):
    return 42


NOT_CALLABLE = 3


def annotated_net(width: int = 4) -> nn.Sequential:
    """A factory annotated (as a string, under future annotations) with an nn.Module subclass."""
    return nn.Sequential(nn.Linear(3, width))


def lying_net(width: int = 4) -> nn.Module:
    """Annotated as returning a module, returns something else: caught after the call."""
    return width


def typed_net(options: Options | None = None, width: int = 4) -> nn.Module:
    """Annotated with a name only a type checker sees: the return annotation is still read."""
    return nn.Linear(3, width)
