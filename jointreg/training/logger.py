"""The run's logging: TensorBoard scalars and image panels, and the ``train.log`` file."""

from __future__ import annotations

import logging

import numpy as np
import torch

from jointreg.export.run_folder import RunPaths
from jointreg.training.config import Recipe


class RunLogger:
    """TensorBoard scalars/images and the run's log file."""

    def __init__(self, recipe: Recipe, paths: RunPaths, start_step: int):
        self.recipe = recipe
        self.writer = None
        if recipe.logging.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(paths.tensorboard), purge_step=start_step or None)
        self.handler = logging.FileHandler(paths.log, encoding="utf-8")
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        self.handler.setLevel(logging.INFO)
        root = logging.getLogger("jointreg")
        root.addHandler(self.handler)
        self._old_level = root.level
        if root.level == logging.NOTSET or root.level > logging.INFO:
            root.setLevel(logging.INFO)

    def scalars(self, prefix: str, values: dict[str, float], step: int) -> None:
        if self.writer is not None:
            for k, v in values.items():
                self.writer.add_scalar(f"{prefix}/{k}", v, step)

    def image(self, tag: str, image: np.ndarray, step: int) -> None:
        if self.writer is not None:
            self.writer.add_image(tag, np.clip(np.nan_to_num(image), 0, 1), step, dataformats="HWC")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        root = logging.getLogger("jointreg")
        root.removeHandler(self.handler)
        root.setLevel(self._old_level)
        self.handler.close()


def log_registration_panel(logger: RunLogger, net, batch, *, num_classes: int, ignore_index: int, step: int) -> None:
    """A fixed | moving | warped | difference | grid | labels panel of the batch's first pair."""
    from jointreg.spatial.warp import warp_labels
    from jointreg.training.panels import registration_panel

    if logger.writer is None:
        return
    with torch.no_grad():
        was_training = net.training
        net.eval()
        out = net(batch.moving[:1], batch.fixed[:1])
        net.train(was_training)
        warped_label = warp_labels(batch.moving_label[:1], out.flow, num_classes, ignore_index=ignore_index)
    panel = registration_panel(
        batch.fixed[:1], batch.moving[:1], out.warped, out.flow, warped_label=warped_label, ignore_index=ignore_index
    )
    logger.image("registration/fixed|moving|warped|diff|grid|labels", panel, step)
