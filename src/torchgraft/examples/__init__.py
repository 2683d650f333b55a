"""The small models behind the bundled recipes (the seed article's three cases).

Each is an ordinary ``nn.Module``: build one, save its ``state_dict``, and you have a
checkpoint to graft from. ``torchgraft.examples.checkpoints`` does exactly that,
deterministically, for the bundled recipes.
"""

from __future__ import annotations

import torch
from torch import nn


class ConvNet(nn.Module):
    """LeNet-style CNN: two conv layers, three fully-connected layers (seed example 1)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [N, C, 32, 32]
        x = self.pool(torch.relu(self.conv1(x)))
        x = self.pool(torch.relu(self.conv2(x)))
        x = torch.flatten(x, 1)
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


class SequentialNet(nn.Module):
    """A CNN written as one ``nn.Sequential`` (seed example 2: keys ``sequential.0.*``...)."""

    def __init__(self, num_classes: int = 10, hidden: int = 32):
        super().__init__()
        self.sequential = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Conv2d(16, hidden, 3, padding=1),
            nn.BatchNorm2d(hidden),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.sequential(x)


class LinearProbe(nn.Module):
    """A normalized linear classifier whose input width varies (seed example 3)."""

    def __init__(self, in_features: int = 12, num_classes: int = 4):
        super().__init__()
        self.norm = nn.LayerNorm(in_features)
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(x))


class LitClassifier(nn.Module):
    """Stands in for a ``LightningModule``: the network lives under ``self.model``, so
    its checkpoint keys read ``model.conv1.weight`` inside ``state_dict``."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.model = ConvNet(num_classes=num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


from torchgraft.examples.llama import MetaLlama  # noqa: E402 -- after the small models it sits beside
from torchgraft.examples.moe import MoELlama  # noqa: E402

__all__ = ["ConvNet", "SequentialNet", "LinearProbe", "LitClassifier", "MetaLlama", "MoELlama"]
