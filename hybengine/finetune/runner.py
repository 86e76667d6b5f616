"""One fine-tune: pretrained (or scratch) U-Net -> N labeled target images -> Dice/IoU/HD95/ASSD on the
target test split.

Fine-tuning is vanilla (DESIGN.md): all weights, mask loss only, clean input at `sigma_clean`. It is
the training loop in `supervised` mode on the labeled subset. `prepare_finetune` resolves what a run
trains (its config, start weights and labeled subset) and `write_result` records what it scored, so the
sequential path here and the batched runner (hybengine/finetune/batched.py) share both ends.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import torch

from ..config import Config, ModelConfig, apply_model_preset, config_from_dict, dumps
from ..data import FolderDataset, labeled_subset, validate_folder
from ..data.label_budget import coverage_warning, mask_classes
from ..data.noise import folder_sigma
from ..inference import predict_probs, resolve_prediction
from ..metrics import image_metrics, summarize
from ..runtime.atomic import atomic_write_text
from ..runtime.checkpoint import load_weights
from ..runtime.cpu_threads import torch_threads
from ..training_loop import run_training
from ..unet import UNet, build_unet, check_checkpoint_embedding

log = logging.getLogger("hybengine.finetune")


def pretrained_init(cfg: Config) -> tuple[Config, dict | None]:
    """Loads finetune.checkpoint; the model architecture comes from the checkpoint's own config."""
    if not cfg.finetune.checkpoint:
        return cfg, None
    w = load_weights(cfg.finetune.checkpoint)
    check_checkpoint_embedding(w["config"], cfg.finetune.checkpoint)
    saved = config_from_dict(w["config"])
    for key in ("image_channels", "num_classes"):
        if getattr(saved.data, key) != getattr(cfg.data, key):
            if key == "num_classes" and cfg.finetune.new_head:
                continue
            hint = (f"; set finetune.new_head=true to keep its body and train a new mask head for "
                    f"{cfg.data.num_classes} classes" if key == "num_classes" else "")
            raise ValueError(f"data.{key}={getattr(cfg.data, key)} but the checkpoint "
                             f"{cfg.finetune.checkpoint} was trained with {getattr(saved.data, key)}{hint}")
    if cfg.finetune.weights == "ema" and w["ema"] is None:
        raise ValueError(f"{cfg.finetune.checkpoint} has no EMA weights; set finetune.weights=raw")
    state = w["ema"] if cfg.finetune.weights == "ema" else w["model"]
    if saved.data.num_classes != cfg.data.num_classes:  # finetune.new_head=true
        if cfg.finetune.distill > 0:
            raise ValueError(f"finetune.distill keeps the checkpoint's own mask predictions, but "
                             f"{cfg.finetune.checkpoint} predicts {saved.data.num_classes} classes, not "
                             f"{cfg.data.num_classes}: set finetune.distill=0 with finetune.new_head")
        state = new_mask_head(state, saved.model, cfg.data.image_channels, cfg.data.num_classes)
        log.info("finetune.new_head: kept the body and the %d image rows of conv_out of %s; its mask rows, "
                 "trained for %d classes, are re-initialised for %d", cfg.data.image_channels,
                 cfg.finetune.checkpoint, saved.data.num_classes, cfg.data.num_classes)
    _report_model_overrides(cfg, saved)
    return dataclasses.replace(cfg, model=saved.model), state


def _report_model_overrides(cfg: Config, saved: Config) -> list[str]:
    """The fine-tune takes the checkpoint's model section whole. Says so in the log for every model.*
    value set explicitly (differing from the default) that the checkpoint's (preset filled in) replaces;
    returns those "model.key=given (checkpoint: used)" notes."""
    given, used, default = apply_model_preset(cfg.model), apply_model_preset(saved.model), ModelConfig()
    notes = [f"model.{f.name}={getattr(cfg.model, f.name)!r} (checkpoint: {getattr(used, f.name)!r})"
             for f in dataclasses.fields(ModelConfig)
             if getattr(cfg.model, f.name) != getattr(default, f.name)
             and getattr(given, f.name) != getattr(used, f.name)]
    if notes:
        log.warning("finetune.checkpoint %s fixes the model section; these settings are replaced by the "
                    "checkpoint's: %s", cfg.finetune.checkpoint, ", ".join(notes))
    return notes


def new_mask_head(state: dict, model: ModelConfig, image_channels: int, num_classes: int) -> dict:
    """`state` with the output conv's mask rows (conv_out rows image_channels..) replaced by a fresh U-Net's
    for `num_classes` classes; every other weight, the image (denoising) rows included, is kept."""
    with torch.random.fork_rng():
        torch.manual_seed(0)  # conv_out starts at zero today; a seeded draw keeps any other init reproducible
        fresh = build_unet(model, image_channels, num_classes).state_dict()
    out = dict(state)
    for name in ("conv_out.weight", "conv_out.bias"):
        head = fresh[name].to(state[name].dtype)
        head[:image_channels] = state[name][:image_channels]
        out[name] = head
    return out


@torch.no_grad()
def evaluate(net: UNet, cfg: Config, split: str, dataset: FolderDataset | None = None) -> dict:
    """Per-image and mean Dice/IoU/HD95/ASSD (per class; hybengine/metrics.py) of argmax predictions on a
    whole split, predicted as cfg.predict says (hybengine/inference.py; recorded under "prediction").
    `dataset`: the split already loaded (sweeps reuse it)."""
    if dataset is None:
        dataset = FolderDataset(dataclasses.replace(cfg.data, labeled_subset=[]), split, train=False)
    p = resolve_prediction(cfg, net)
    net.eval()
    per_image = []
    with torch_threads(cfg.train.threads):  # as the run trained: sweep shards side by side must not oversubscribe
        for i in range(len(dataset)):
            image, mask, name = dataset[i]
            pred = predict_probs(net, image, cfg, p).argmax(0).cpu()
            per_image.append({"name": name, **image_metrics(pred, mask, cfg.data.num_classes,
                                                            cfg.data.ignore_index)})
    net.train()
    return {"per_image": per_image, **summarize(per_image, cfg.data.num_classes), "prediction": p.describe()}


def prepare_finetune(cfg: Config, pool: list[str] | None = None) -> tuple[Config, dict | None]:
    """(run config, start weights or None) of the fine-tune that cfg.finetune describes: the checkpoint's
    architecture, the seed's nested labeled subset of `pool` (the train split's stems; scanned if None)
    under finetune.subset_policy, supervised mode, train.steps + finetune.steps_per_label * budget steps
    (the same schedule for every start), the plain backend, train.seed = finetune.seed."""
    ft = cfg.finetune
    cfg, init = pretrained_init(cfg)
    d = cfg.data
    if pool is None:
        pool = validate_folder(d.root, d.train_split, dataclasses.replace(d, labeled_subset=[]))
    subset = draw_subset(cfg, pool)
    run_cfg = dataclasses.replace(
        cfg,
        data=dataclasses.replace(d, labeled_subset=subset),
        objective=dataclasses.replace(cfg.objective, mode="supervised"),
        train=dataclasses.replace(cfg.train, seed=ft.seed, backend="plain",
                                  steps=cfg.train.steps + ft.steps_per_label * ft.budget),
    )
    return with_target_images(at_target_sigma(run_cfg)), init


def at_target_sigma(run_cfg: Config) -> Config:
    """finetune.sigma=estimate: sigma_clean (fine-tune and prediction) := the noise level measured on the
    target train split's images (hybengine/data/noise.py; no mask read), inputs fed as they are."""
    if run_cfg.finetune.sigma != "estimate":
        return run_cfg
    d = run_cfg.data
    sigma = folder_sigma(d.root, d.train_split, d)
    log.info("finetune.sigma=estimate: %.4f measured on the images of %s", sigma, Path(d.root) / d.train_split)
    return dataclasses.replace(run_cfg, objective=dataclasses.replace(
        run_cfg.objective, sigma_clean=max(sigma, 1e-4), clean_input_noise=False))


def draw_subset(cfg: Config, pool: list[str]) -> list[str]:
    """The budget's labeled images (none at budget 0). Masks read: the subset's alone under the "any" policy;
    under "foreground" the classes present in every pool mask, which order the draw."""
    ft, d = cfg.finetune, cfg.data
    if ft.budget == 0:
        return []
    if ft.subset_policy == "foreground":
        classes = mask_classes(d.root, d.train_split, pool, d.mask_format, d.ignore_index)
        subset = labeled_subset(pool, ft.budget, ft.seed, "foreground", classes, ft.distinct_subsets)
    else:
        subset = labeled_subset(pool, ft.budget, ft.seed, "any", distinct=ft.distinct_subsets)
        classes = mask_classes(d.root, d.train_split, subset, d.mask_format, d.ignore_index)
    warning = coverage_warning(subset, classes, d.num_classes)
    if warning:
        log.warning("budget %d, seed %d: %s", ft.budget, ft.seed, warning)
    return subset


def with_target_images(run_cfg: Config) -> Config:
    """finetune.unlabeled_share > 0: the last samples of each batch are the target train split's images as
    unlabeled samples (their masks never read). They keep the denoising term at random sigma (objective
    mode hybrid, clean_share = the labeled share, no denoising term at sigma_clean), or with
    finetune.distill > 0 the start's predictions at sigma_clean (mode supervised: every sample at
    sigma_clean; the loop's teacher, hybengine/objective.py). The labeled head of the batch stays at
    sigma_clean with the mask term. 0: unchanged (vanilla fine-tune); so is a distill run from scratch,
    which has no start to keep (finetune.distill set to 0 in its config). Idempotent: a resumed run's
    saved config comes back unchanged."""
    ft, d, o = run_cfg.finetune, run_cfg.data, run_cfg.objective
    if ft.distill > 0 and not ft.checkpoint:
        log.info("finetune.distill=%g: a run from scratch has no start to keep; fine-tuned vanilla", ft.distill)
        return dataclasses.replace(run_cfg, finetune=dataclasses.replace(ft, distill=0.0, unlabeled_share=0.0))
    if ft.unlabeled_share <= 0 or ft.budget == 0:
        return run_cfg
    B = run_cfg.train.batch_size
    k = round(ft.unlabeled_share * B)
    pool = str(Path(d.root) / d.train_split)
    data = dataclasses.replace(d, unlabeled=d.unlabeled if pool in d.unlabeled else [*d.unlabeled, pool],
                               unlabeled_share=ft.unlabeled_share)
    if ft.distill > 0:
        return dataclasses.replace(run_cfg, data=data)
    return dataclasses.replace(run_cfg, data=data, objective=dataclasses.replace(
        o, mode="hybrid", clean_share=(B - k) / B, denoise_at_clean=False))


def write_result(run_cfg: Config, metrics: dict, steps: int, init_name: str | None = None) -> dict:
    """Writes `<train.out_dir>/result.json` (atomically: a sweep treats its presence as "done")."""
    ft, d = run_cfg.finetune, run_cfg.data
    record = {
        "init": init_name or ft.checkpoint or "scratch", "checkpoint": ft.checkpoint, "budget": ft.budget,
        "seed": ft.seed, "labeled": d.labeled_subset, "steps": steps,
        "test_split": str(Path(d.root) / d.test_split), **metrics,
    }
    out = Path(run_cfg.train.out_dir) / "result.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(record, indent=2))
    log.info("fine-tune %s, budget %d, seed %d: mean foreground Dice %.4f (per class %s) -> %s",
             record["init"], ft.budget, ft.seed, record["mean_fg_dice"],
             [round(v, 4) for v in record["dice"]], out)
    return record


def command_config(run_cfg: Config) -> Config:
    """The fine-tune command's config back from the config a fine-tune saved (`--resume RUN`): the saved
    train.steps holds finetune.steps_per_label * budget more; everything else `prepare_finetune` sets
    it sets again to the same values."""
    ft = run_cfg.finetune
    return dataclasses.replace(run_cfg, train=dataclasses.replace(
        run_cfg.train, steps=run_cfg.train.steps - ft.steps_per_label * ft.budget))


def run_finetune(cfg: Config, *, console_logging: bool = True, init_name: str | None = None,
                 pool: list[str] | None = None, test_set: FolderDataset | None = None,
                 resume: str | None = None) -> dict:
    """Fine-tunes per cfg.finetune and writes `<train.out_dir>/result.json`; returns the result. Every
    split it needs (train and test) is read before training starts. `resume`: continue the killed
    fine-tune in that run folder (as `train --resume`: the same config, bit for bit). Budget 0: the
    start as it is (`zero_shot`)."""
    if cfg.finetune.budget == 0:
        return zero_shot(cfg, init_name, pool, test_set)
    run_cfg, init = prepare_finetune(cfg, pool)
    if test_set is None:  # checked (and loaded) now: a bad test split must not wait for the end of training
        test_set = FolderDataset(dataclasses.replace(run_cfg.data, labeled_subset=[]), run_cfg.data.test_split,
                                 train=False)
    result = run_training(run_cfg, init_weights=init, console_logging=console_logging, resume=resume)
    metrics = evaluate(result.best_net, run_cfg, run_cfg.data.test_split, test_set)
    return write_result(run_cfg, metrics, result.step, init_name)


def zero_shot(cfg: Config, init_name: str | None = None, pool: list[str] | None = None,
              test_set: FolderDataset | None = None) -> dict:
    """Budget 0: the start's mask head as it is, at the prediction sigma, scored like a fine-tune (no
    target label read, no step taken); writes config.yaml and result.json like one."""
    run_cfg, init = prepare_finetune(cfg, pool if pool is not None else [])
    if init is None:
        raise ValueError("finetune.budget=0 needs finetune.checkpoint: an untrained net has no zero-shot score")
    net = build_unet(run_cfg.model, run_cfg.data.image_channels, run_cfg.data.num_classes)
    net.load_state_dict(init)
    out = Path(run_cfg.train.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.yaml", dumps(run_cfg))
    metrics = evaluate(net, run_cfg, run_cfg.data.test_split, test_set)
    return write_result(run_cfg, metrics, 0, init_name)
