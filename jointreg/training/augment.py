"""Augmentation of 2D training slices with albumentations, reproducible per training step.

Each call gets its own seed (derived from the run seed and the step), so a resumed run draws the
same augmentations as an uninterrupted one without saving albumentations' internal state.
Images are normalised float32 in [0, 1]; labels are integer maps where the ignore id must stay
ignore (nearest-neighbour mask interpolation keeps ids intact).
"""

from __future__ import annotations

import numpy as np

from jointreg.training.config import AugmentationConfig


class SliceAugmenter:
    """Random affine (+ optional elastic) and intensity changes for image/label slice pairs.

    Args:
        config: the recipe's augmentation section.
    """

    def __init__(self, config: AugmentationConfig):
        import albumentations as A
        import cv2

        self.config = config
        spatial = [
            A.Affine(
                scale=tuple(config.scale),
                translate_percent=(-config.translate, config.translate),
                rotate=(-config.rotate, config.rotate),
                interpolation=cv2.INTER_LINEAR,
                mask_interpolation=cv2.INTER_NEAREST,
                border_mode=cv2.BORDER_CONSTANT,
                fill=0.0,
                fill_mask=0,
                p=config.probability,
            )
        ]
        if config.elastic > 0:
            spatial.append(
                A.ElasticTransform(alpha=config.elastic, sigma=8.0, border_mode=cv2.BORDER_CONSTANT, fill=0.0, fill_mask=0, p=0.3)
            )
        intensity = [
            A.RandomBrightnessContrast(
                brightness_limit=config.brightness, contrast_limit=config.contrast, brightness_by_max=True,
                p=config.probability,
            ),
            A.RandomGamma(gamma_limit=(100 * config.gamma[0], 100 * config.gamma[1]), p=config.probability / 2),
        ]
        if config.noise > 0:
            intensity.append(A.GaussNoise(std_range=(0.0, config.noise), p=config.probability / 2))
        self.transform = A.Compose(spatial + intensity, seed=0)

    def __call__(self, image: np.ndarray, label: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """Augment one slice.

        Args:
            image: ``(H, W)`` float32 in [0, 1].
            label: ``(H, W)`` integer label map.
            seed: the seed for this draw.

        Returns:
            The augmented image (clipped to [0, 1]) and label, same shapes and dtypes.
        """
        if not self.config.enabled:
            return image, label
        self.transform.set_random_seed(int(seed) % 2**32)
        out = self.transform(image=np.ascontiguousarray(image, np.float32), mask=np.ascontiguousarray(label, np.int32))
        return np.clip(out["image"], 0.0, 1.0).astype(np.float32), out["mask"].astype(label.dtype)
