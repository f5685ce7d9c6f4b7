"""The run's logging: TensorBoard scalars and image panels, and the ``train.log`` file.

TensorBoard tags: ``registration/loss/*``, ``segmentation/loss/*`` and the learning rates every
``logging.log_every`` steps; ``validation/*`` (held-out cases: ``dice``, ``dice/<class name>``,
``registration/label_dice``, ``registration/ncc``, ``registration/folding_percent``, ...) and
``monitor/*`` (the same scores on the training volumes' complete labels, ``logging.monitor``) at
every validation, each with a ``.../segmentation`` image (fixed slices, ground-truth and
predicted contours); the ``registration/fixed|moving|...`` panel every ``logging.image_every``
steps; and the final evaluation under ``test/<metric>/<class name>`` (mean Dice, HD, HD95,
ASSD in mm, ``missed`` counts) and ``test/registration/*``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from jointreg.export.run_folder import RunPaths
from jointreg.training.config import Recipe

log = logging.getLogger(__name__)


class RunLogger:
    """TensorBoard scalars/images and the run's log file.

    Args:
        enabled: ``False`` for the ranks other than 0 of a multi-process run: nothing is written.
    """

    def __init__(self, recipe: Recipe, paths: RunPaths, start_step: int, *, enabled: bool = True):
        self.recipe = recipe
        self.writer = self.handler = None
        if not enabled:
            return
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

    def evaluation(self, evaluation: Mapping[str, Any] | None, step: int) -> None:
        """The final evaluation's figures (``summary["evaluation"]``) under ``test/`` (``Ts``
        split) or ``evaluation/`` (another split): per class the mean of each metric and the
        missed count, and the registration's means."""
        if self.writer is None or not evaluation:
            return
        prefix = "test" if evaluation.get("split", "Ts") == "Ts" else "evaluation"
        for name, entry in (evaluation.get("segmentation") or {}).get("classes", {}).items():
            for metric, stats in entry.items():
                if isinstance(stats, Mapping) and stats.get("mean") is not None:
                    self.writer.add_scalar(f"{prefix}/{metric}/{name}", stats["mean"], step)
            self.writer.add_scalar(f"{prefix}/missed/{name}", entry.get("missed", 0), step)
        for key, value in (evaluation.get("registration") or {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(f"{prefix}/registration/{key}", value, step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.handler is None:
            return
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
    fixed, moving, warped, flow = batch.fixed[:1], batch.moving[:1], out.warped, out.flow
    if fixed.dim() == 5:  # 3D mode: the middle plane across the last axis, its in-plane field
        mid = fixed.shape[-1] // 2
        fixed, moving, warped, warped_label = (t[..., mid] for t in (fixed, moving, warped, warped_label))
        flow = flow[:, :2, ..., mid]
    panel = registration_panel(fixed, moving, warped, flow, warped_label=warped_label, ignore_index=ignore_index)
    logger.image("registration/fixed|moving|warped|diff|grid|labels", panel, step)


def log_validation_round(logger: RunLogger, recipe: Recipe, data, nets, step: int) -> None:
    """What each validation adds besides the held-out scores: the segmentation panel of the
    validation cases, and the scores and panel of the monitored training volumes
    (``logging.monitor``: logged, never used to select weights or stop).

    Runs under :func:`~jointreg.training.validation.isolated_rng`, so training continues with
    the random states it would have had without it.
    """
    from jointreg.training.validation import isolated_rng, validation_scores
    from jointreg.utils.device import module_device

    count = recipe.logging.panel_slices
    device = module_device(nets.segmentor if nets.segmentor is not None else nets.registration)
    with isolated_rng(device):
        if data.validation:
            _log_segmentation_panel(logger, nets.segmentor, data.validation, data, "validation", step, count)
        if data.monitor:
            scores = validation_scores(recipe, data, nets, data.monitor, use_full_labels=True)
            logger.scalars("monitor", scores, step)
            log.info("step %d monitor (training volumes, complete labels): %s", step,
                     json.dumps({k: round(v, 4) for k, v in scores.items()}))
            _log_segmentation_panel(logger, nets.segmentor, data.monitor, data, "monitor", step, count)


def _log_segmentation_panel(logger: RunLogger, segmentor, volumes, data, prefix: str, step: int, count: int) -> None:
    from jointreg.training.panels import panel_slices, segmentation_montage

    if logger.writer is None or segmentor is None or count < 1:
        return
    slots = panel_slices(volumes, count, ignore_index=data.ignore_index)
    if slots:
        picture = segmentation_montage(segmentor, volumes, slots, data.labels)
        logger.image(f"{prefix}/segmentation", picture.astype(np.float32) / 255.0, step)

