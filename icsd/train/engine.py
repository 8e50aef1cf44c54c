"""The loss of a training step: the loss terms on the (optionally all-gathered) model outputs."""
from __future__ import annotations

import torch

from icsd.config import Config
from icsd.distributed import all_gather_no_grad, all_gather_with_grad
from icsd.losses import LossInputs, icsd_loss, loss_inputs


def gather_for_loss(out: dict, batch: dict, inputs: LossInputs) -> tuple[dict, dict]:
    """All-gather what the loss reads (``inputs``, declared by ``icsd.losses``) across ranks: model outputs
    with gradient, batch fields as constants. Everything else (the temperatures) stays as it is."""
    # Every rank computes the same global-batch loss. The gather's backward sums the gradient over the
    # ranks (x world size) and DDP's all-reduce averages it (/ world size): together exactly the gradient
    # one process would get on the global batch, so the loss is not rescaled here.
    out = {k: all_gather_with_grad(v) if k in inputs.outputs else v for k, v in out.items()}
    batch = {k: all_gather_no_grad(batch[k]) for k in inputs.batch}
    return out, batch


def compute_loss_terms(out: dict, batch: dict, cfg: Config) -> dict[str, torch.Tensor]:
    if cfg.loss.gather_features:
        out, batch = gather_for_loss(out, batch, loss_inputs(cfg.loss))
    return icsd_loss(out, batch["image_index"], cfg.loss, batch.get("ext_img"), batch.get("ext_txt"))
