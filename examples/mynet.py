"""A network of one's own, as edgecompress sees it: no conventional attribute names, a concatenation branch,
a residual block. Name it in YAML as `mynet:build` (run from this folder, or put it on PYTHONPATH)."""

from __future__ import annotations

import torch
import torch.nn as nn


def conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class Residual(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.body = nn.Sequential(conv_bn(ch, ch), nn.Conv2d(ch, ch, 3, 1, 1, bias=False), nn.BatchNorm2d(ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.body(x))


class MyNet(nn.Module):
    def __init__(self, num_classes: int = 10, in_chans: int = 1, width: int = 24) -> None:
        super().__init__()
        self.body = nn.Sequential(conv_bn(in_chans, width), Residual(width), conv_bn(width, 2 * width, 2),
                                  Residual(2 * width))
        self.left, self.right = conv_bn(2 * width, width, 2), conv_bn(2 * width, width, 2)
        self.head = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.body(x)
        x = torch.cat([self.left(x), self.right(x)], 1)
        return self.head(x.mean((2, 3)))


def build(num_classes: int = 10, in_chans: int = 1, width: int = 24) -> MyNet:
    return MyNet(num_classes, in_chans, width)
