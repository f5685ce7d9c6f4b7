"""FCN-8s (Long et al., 2015) scaled down for CPUs: a VGG-style encoder with three score heads.

Scores from 1/32 (stage 5), 1/16 (stage 4) and 1/8 (stage 3) are fused by upsampling and adding
(the "8s" skip architecture), then upsampled to the input size. Upsampling is bilinear (fixed),
which keeps any input size working; the paper's learnable deconvolutions initialised to bilinear
add parameters without a measurable gain at this scale.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from jointreg.nets.blocks import crop_to, pad_to_multiple


def _stage(cin: int, cout: int, convs: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(convs):
        layers += [
            nn.Conv2d(cin if i == 0 else cout, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        ]
    layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class FCN(nn.Module):
    """FCN-8s segmentor for 2D slices.

    Args:
        in_channels: image channels.
        classes: output classes (background included).
        features: channels of the five encoder stages.
        head_channels: width of the fully-convolutional head on stage 5 ("fc6/fc7").
        dropout: dropout in the head.

    Shapes:
        ``(B, in_channels, H, W)`` → logits ``(B, classes, H, W)``, any H, W.
    """

    stride = 32

    def __init__(
        self,
        in_channels: int = 1,
        classes: int = 2,
        features: tuple[int, ...] | list[int] = (16, 32, 64, 128, 128),
        head_channels: int = 256,
        dropout: float = 0.2,
    ):
        super().__init__()
        if len(features) != 5:
            raise ValueError("FCN needs exactly five stage widths")
        self.config = {
            "in_channels": in_channels, "classes": classes, "features": list(features),
            "head_channels": head_channels, "dropout": dropout,
        }
        self.spatial_dims = 2
        convs = (2, 2, 3, 3, 3)
        widths = [in_channels, *features]
        self.stages = nn.ModuleList(_stage(widths[i], widths[i + 1], convs[i]) for i in range(5))
        self.head = nn.Sequential(
            nn.Conv2d(features[4], head_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(head_channels),
            nn.ReLU(inplace=True),
            nn.Dropout2d(dropout),
            nn.Conv2d(head_channels, head_channels, 1, bias=False),
            nn.BatchNorm2d(head_channels),
            nn.ReLU(inplace=True),
            nn.Dropout2d(dropout),
            nn.Conv2d(head_channels, classes, 1),
        )
        self.score4 = nn.Conv2d(features[3], classes, 1)
        self.score3 = nn.Conv2d(features[2], classes, 1)
        # The skip scores start at zero so training begins as FCN-32s and learns the refinements.
        for layer in (self.score4, self.score3):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[2:]
        x = pad_to_multiple(x, self.stride)
        skips = []
        h = x
        for stage in self.stages:
            h = stage(h)
            skips.append(h)
        score = self.head(skips[4])
        score = F.interpolate(score, size=skips[3].shape[2:], mode="bilinear", align_corners=False)
        score = score + self.score4(skips[3])
        score = F.interpolate(score, size=skips[2].shape[2:], mode="bilinear", align_corners=False)
        score = score + self.score3(skips[2])
        score = F.interpolate(score, size=x.shape[2:], mode="bilinear", align_corners=False)
        return crop_to(score, size)
