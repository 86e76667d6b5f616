"""One fine-tune: pretrained (or scratch) U-Net -> N labeled target images -> Dice/IoU on the target test split.

Fine-tuning is vanilla (DESIGN.md): all weights, mask loss only, clean input at `sigma_clean`. It is
the training loop in `supervised` mode on the labeled subset; a sweep is a loop over `run_finetune`.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import torch
import torch.nn.functional as F

from .config import Config, config_from_dict
from .data import FolderDataset, labeled_subset, validate_folder
from .engine.atomic import atomic_write_text
from .engine.checkpoint import load_weights
from .metrics import confusion_counts, dice_iou, summarize
from .objective import predict_logits
from .training_loop import run_training
from .unet import UNet

log = logging.getLogger("hybengine.finetune")


def pretrained_init(cfg: Config) -> tuple[Config, dict | None]:
    """Loads finetune.checkpoint; the model architecture comes from the checkpoint's own config."""
    if not cfg.finetune.checkpoint:
        return cfg, None
    w = load_weights(cfg.finetune.checkpoint)
    saved = config_from_dict(w["config"])
    for key in ("image_channels", "num_classes"):
        if getattr(saved.data, key) != getattr(cfg.data, key):
            raise ValueError(f"data.{key}={getattr(cfg.data, key)} but the checkpoint "
                             f"{cfg.finetune.checkpoint} was trained with {getattr(saved.data, key)}")
    if cfg.finetune.weights == "ema" and w["ema"] is None:
        raise ValueError(f"{cfg.finetune.checkpoint} has no EMA weights; set finetune.weights=raw")
    state = w["ema"] if cfg.finetune.weights == "ema" else w["model"]
    return dataclasses.replace(cfg, model=saved.model), state


@torch.no_grad()
def evaluate(net: UNet, cfg: Config, split: str) -> dict:
    """Per-image and mean Dice/IoU of argmax predictions on a whole split (images padded to fit the net)."""
    data_cfg = dataclasses.replace(cfg.data, labeled_subset=[])
    ds = FolderDataset(data_cfg, split, train=False)
    device = next(net.parameters()).device
    net.eval()
    per_image = []
    for i in range(len(ds)):
        image, mask, name = ds[i]
        logits = predict_padded(net, image[None].to(device), cfg.objective.sigma_clean, cfg.objective.sigma_data)
        tp, fp, fn = confusion_counts(logits[0].argmax(0).cpu(), mask, cfg.data.num_classes, cfg.data.ignore_index)
        dice, iou = dice_iou(tp, fp, fn)
        per_image.append({"name": name, "dice": dice.tolist(), "iou": iou.tolist()})
    net.train()
    return {"per_image": per_image, **summarize(per_image, cfg.data.num_classes)}


def predict_padded(net: UNet, x: torch.Tensor, sigma_clean: float, sigma_data: float) -> torch.Tensor:
    """Mask logits for images of any size: reflect-pad to the net's multiple, predict, crop back."""
    f = net.downsample_factor
    H, W = x.shape[-2:]
    ph, pw = (-H) % f, (-W) % f
    xp = F.pad(x, (0, pw, 0, ph), mode="reflect") if ph or pw else x
    return predict_logits(net, xp, sigma_clean, sigma_data)[..., :H, :W].float()


def run_finetune(cfg: Config, *, console_logging: bool = True) -> dict:
    """Fine-tunes per cfg.finetune and writes `<train.out_dir>/result.json`; returns the result."""
    ft = cfg.finetune
    cfg, init = pretrained_init(cfg)
    pool = validate_folder(cfg.data.root, cfg.data.train_split, dataclasses.replace(cfg.data, labeled_subset=[]))
    subset = labeled_subset(pool, ft.budget, ft.seed)
    run_cfg = dataclasses.replace(
        cfg,
        data=dataclasses.replace(cfg.data, labeled_subset=subset),
        objective=dataclasses.replace(cfg.objective, mode="supervised"),
        train=dataclasses.replace(cfg.train, seed=ft.seed, engine="plain"),
    )
    result = run_training(run_cfg, init_weights=init, console_logging=console_logging)
    metrics = evaluate(result.best_net, run_cfg, cfg.data.test_split)
    record = {
        "init": ft.checkpoint or "scratch", "budget": ft.budget, "seed": ft.seed, "labeled": subset,
        "steps": result.step, "test_split": str(Path(cfg.data.root) / cfg.data.test_split), **metrics,
    }
    out = Path(cfg.train.out_dir) / "result.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(record, indent=2))
    log.info("fine-tune %s, budget %d, seed %d: mean foreground Dice %.4f (per class %s) -> %s",
             record["init"], ft.budget, ft.seed, record["mean_fg_dice"],
             [round(d, 4) for d in record["dice"]], out)
    return record
