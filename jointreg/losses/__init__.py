"""Losses: image similarity, field smoothness, segmentation (with an ignore label).

Each is a pure function (device and dtype follow the input) with a thin ``nn.Module`` wrapper;
similarity losses and regularisers resolve by name through :func:`create_similarity_loss` and
:func:`create_regularizer`.
"""

from jointreg.losses.regularization import BendingEnergy, Diffusion, bending_energy, create_regularizer, diffusion
from jointreg.losses.segmentation import (
    CEDiceLoss,
    DiceLoss,
    ce_dice_loss,
    dice_loss,
    soft_dice,
    warped_label_dice_loss,
)
from jointreg.losses.similarity import (
    LNCCLoss,
    MILoss,
    MSELoss,
    NCCLoss,
    SSIMLoss,
    create_similarity_loss,
    lncc,
    mse,
    mutual_information,
    ncc,
    nmi,
    ssim,
)

__all__ = [
    "BendingEnergy", "CEDiceLoss", "DiceLoss", "Diffusion", "LNCCLoss", "MILoss", "MSELoss", "NCCLoss",
    "SSIMLoss", "bending_energy", "ce_dice_loss", "create_regularizer", "create_similarity_loss", "dice_loss",
    "diffusion", "lncc", "mse", "mutual_information", "ncc", "nmi", "soft_dice", "ssim", "warped_label_dice_loss",
]
