"""Typed run configuration: defaults in code, small YAML diffs in `configs/`, `key=value` overrides.

Every field carries its default and a short comment. `load_config` merges defaults <- YAML <-
overrides, then `validate` rejects unknown keys, wrong types and impossible values before anything
runs, naming the key and what is allowed.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger("hybengine.config")


class ConfigError(ValueError):
    """A config key, type or value that cannot run; the message names it and says what to do."""


def choice(default: str, *allowed: str, **marks: bool) -> Any:
    return field(default=default, metadata={"choices": (default, *allowed), **marks})


# Marks on a field's metadata (read by `marked_keys`), one place for what each key may do:
#   resume_free: may change when a run is resumed (`--resume RUN key=value`): how the run is watched,
#                kept or how long it goes on, not what one of its steps computes
#   bookkeeping: how a run is watched, not what it trains: a finished fine-tune stays finished when only
#                these change (sweeps); every bookkeeping key is also resume_free
#   per_member:  may differ between the fine-tunes one batched group trains together
RESUME_FREE = {"resume_free": True}
BOOKKEEPING = {"resume_free": True, "bookkeeping": True}
PER_MEMBER = {"per_member": True}


def marked(default: Any = dataclasses.MISSING, *, factory: Any = dataclasses.MISSING, **marks: bool) -> Any:
    """A field with marks (above) in its metadata."""
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata=marks)
    return field(default=default, metadata=marks)


@dataclass
class DataConfig:
    root: str = "demo_data/scratch-assay/fluorescence"  # folder holding <split>/images and <split>/masks
    train_split: str = "train"  # sub-folder used for training
    test_split: str = "test"  # sub-folder used for evaluation
    num_classes: int = 3  # K: mask labels are 0..K-1
    image_channels: int = 1  # I: 1 (gray) or 3 (RGB); gray files are repeated, RGB turned to luma for I=1
    mask_format: str = choice("index", "binary255")  # class-index PNG, or 0/255 binary masks (-> 0/1)
    ignore_index: int = 255  # mask value excluded from the loss and the metrics
    normalize: str = choice("percentile", "dtype")  # per-image 0.5/99.5 percentiles, or the dtype's range
    crop: int = 64  # training crop side (pixels); must divide by 2**(levels-1)
    augment: bool = True  # random crop position, flips, 90-degree rotations, intensity jitter
    intensity_jitter: float = 0.1  # image-only brightness/contrast amplitude (fraction)
    # Few-label augmentation (hybengine/data/augment.py), each off at 0 so earlier runs reproduce; seeded per
    # sample, one warp for image (bilinear) and mask (nearest); configs/finetune/few_labels.yaml turns them on
    aug_scale: float = 0.0  # zoom drawn log-uniformly in [1 / (1 + aug_scale), 1 + aug_scale]
    aug_rotate: float = 0.0  # rotation in degrees, uniform in [-aug_rotate, aug_rotate] (besides quarter turns)
    aug_elastic: float = 0.0  # elastic deformation: largest displacement of a smooth random field, pixels
    aug_gamma: float = 0.0  # image only: gamma log-uniform in [1 / (1 + aug_gamma), 1 + aug_gamma]
    aug_noise: float = 0.0  # image only: Gaussian noise, std uniform in [0, aug_noise] (normalised units)
    aug_blur: float = 0.0  # image only: Gaussian blur, sigma uniform in [0, aug_blur] pixels
    # batch source (DALI: see hybengine/data/dali_pipeline)
    loader: str = choice("torch", "dali", "auto", **BOOKKEEPING)
    num_workers: int = marked(0, **BOOKKEEPING)  # torch DataLoader worker processes
    labeled_subset: list[str] = marked(factory=list, **PER_MEMBER)  # only these file stems (label budgets)
    # Unlabeled images (hybengine/data/unlabeled.py): folders whose images/ are used without their masks
    # (e.g. the target's train split), besides <root>/unlabeled/images when it exists. They carry an
    # all-ignore mask, so they train the denoising term only.
    unlabeled: list[str] = field(default_factory=list)
    unlabeled_share: float = 0.0  # the last round(share * batch) samples of each batch are unlabeled; 0: none


@dataclass
class ModelConfig:
    preset: str = choice("tiny", "small", "base")  # sizes below; 0 / empty fields take the preset's
    channels: int = 0  # base width of the U-Net
    channel_mult: list[int] = field(default_factory=list)  # width multiplier per resolution level
    num_res_blocks: int = 0  # residual blocks per level (encoder side)
    attn_levels: list[int] = field(default_factory=list)  # levels (0 = full res) with self-attention
    groups: int = 8  # GroupNorm groups; must divide every width
    dropout: float = 0.0  # dropout inside residual blocks
    channels_last: bool = False  # NHWC activations (measured per device: see hybengine/ops.py)
    compile: bool = False  # torch.compile the U-Net
    # what the noise embedding's sinusoids read: "edm" = c_noise = ln(sigma)/4 as it is (EDM); "x1000" =
    # 1000 * c_noise, the old form (close to a hash of sigma), only to reproduce old runs. Checkpoints
    # saved without this key used x1000 and are refused (hybengine/unet.py check_checkpoint_embedding)
    noise_embedding: str = choice("edm", "x1000")
    # with compile: one compiled region for the step's math (U-Net forward, joint loss, their means;
    # AOTAutograd compiles the backward with it) instead of the U-Net's forward only; noise stays eager
    compile_step: bool = False


@dataclass
class ObjectiveConfig:
    # which terms train (DESIGN.md): hybrid = denoise + mask at random sigma; supervised = mask on clean
    # input at sigma_clean; supervised-noisy = mask at hybrid's sigmas without the denoise term (the
    # control that separates the generative term from noise augmentation); denoise = image term only
    mode: str = choice("hybrid", "supervised", "denoise", "supervised-noisy")
    P_mean: float = -1.2  # ln(sigma) ~ N(P_mean, P_std^2) during training (EDM)
    P_std: float = 1.2  # spread of ln(sigma) during training (EDM)
    sigma_data: float = 0.5  # EDM data standard deviation
    sigma_clean: float = 0.002  # fixed noise level for supervised pretraining, fine-tuning, prediction
    # hybrid and supervised-noisy: this share of each batch is drawn at sigma_clean instead of
    # logN(P_mean, P_std), so the mask head is trained where fine-tuning and prediction use it
    clean_share: float = 0.25
    w_mask: float = 0.2  # weight of the mask term (the paper down-weights it)
    dice_weight: float = 1.0  # mask term = w_mask * (CE + dice_weight * soft-Dice); 0 = plain CE
    # keep the denoising term on samples drawn at sigma_clean; there lambda * c_out^2 = 1 and its target is
    # essentially the added noise itself, a loss of about 1 that nothing can learn (false: term dropped)
    denoise_at_clean: bool = False
    # add sigma_clean * n to samples at sigma_clean (false: the images carry that noise themselves, as
    # when finetune.sigma=estimate sets sigma_clean to the target images' measured noise level)
    clean_input_noise: bool = True


@dataclass
class OptimConfig:
    lr: float = 3e-4  # AdamW peak learning rate
    weight_decay: float = 0.0  # AdamW decoupled weight decay
    beta1: float = 0.9  # AdamW first-moment decay
    beta2: float = 0.99  # AdamW second-moment decay
    warmup_steps: int = 100  # linear warm-up to lr over these steps
    # after warm-up: "constant" keeps lr; "cosine" decays it to lr * min_lr_ratio at train.steps
    decay: str = choice("constant", "cosine")
    min_lr_ratio: float = 0.05  # cosine decay's floor, as a fraction of lr
    grad_clip: float = 1.0  # global-norm clip; 0 disables
    # lr multiplier for every weight but the output conv (conv_out, the head): < 1 in a fine-tune keeps a
    # pretrained body near its start (discriminative fine-tuning; 0 freezes it); 1 = one lr for all
    body_lr_scale: float = 1.0


@dataclass
class TrainConfig:
    steps: int = marked(1000, **RESUME_FREE)  # optimizer steps
    batch_size: int = 8  # per rank per micro-step
    grad_accum: int = 1  # micro-steps per optimizer step
    precision: str = choice("fp32", "bf16")  # bf16: autocast (plain) / DeepSpeed bf16 section
    # optimizer back-end (hybengine/runtime/backends.py): auto = deepspeed when launched by its launcher
    backend: str = choice("auto", "plain", "deepspeed")
    deepspeed_config: str = "configs/deepspeed/zero2.json"  # ZeRO stage etc.
    ema_halflife_steps: float = 200.0  # EMA half-life in optimizer steps; 0 disables EMA
    ckpt_every: int = marked(500, **BOOKKEEPING)  # steps between checkpoints; 0: only at the end
    keep_last: int = marked(2, **BOOKKEEPING)  # checkpoints kept
    log_every: int = marked(25, **BOOKKEEPING)  # steps between metric logs (one host sync each)
    # consecutive non-finite losses before the run stops (flags read at log and snapshot steps: the
    # stop comes at the first such read after the limit; the steps in between changed no weights)
    max_bad_steps: int = marked(5, **RESUME_FREE)
    # flag non-finite losses on the device and skip their steps' updates (optimizer and EMA), so a
    # NaN never reaches the weights; no host read per step (hybengine/training_loop.py)
    check_finite: bool = True
    seed: int = marked(0, **PER_MEMBER)  # weights, noise and data order; fine-tunes take finetune.seed
    # run folder: config, metrics.jsonl, checkpoints/
    out_dir: str = marked("runs/pretrain", **RESUME_FREE, **PER_MEMBER)
    progress: bool = marked(True, **BOOKKEEPING)  # rich progress bar on rank 0
    # redraw <out_dir>/progress.png from metrics.jsonl (needs matplotlib): at the first log step, then
    # at most every 30 s, and at the end; each draw costs CPU time a tiny run notices
    plot: bool = marked(True, **BOOKKEEPING)
    threads: int = marked(0, **BOOKKEEPING)  # torch CPU threads; 0 leaves torch's default
    # glibc malloc on CPU runs (hybengine/runtime/cpu_malloc.py): "tuned" keeps freed activation
    # memory for the next step instead of page-faulting it in again. Opt-in: it removed the faults
    # but no step-time gain showed above the host's noise (docs/lab/malloc.md)
    cpu_malloc: str = choice("default", "tuned", **BOOKKEEPING)
    # also write TensorBoard events to <out_dir>/tensorboard (needs `tensorboard`)
    tensorboard: bool = marked(False, **BOOKKEEPING)
    # CUDA graphs for the compiled region (torch.compile mode="reduce-overhead"): replays the step's
    # kernels without per-launch host work; needs model.compile and a CUDA device (ignored on CPU)
    cuda_graphs: bool = False


@dataclass
class KernelConfig:
    group_norm_silu: str = choice("auto", "fused", "reference")  # auto: fused on CUDA, measured on CPU
    hybrid_loss: str = choice("auto", "fused", "reference")  # the joint loss; auto as for group_norm_silu
    # Triton design of the fused GroupNorm-SiLU on CUDA (kernels/group_norm_silu/design.py): "groups"
    # (timed on H100/H200), "rows" (channels-last inputs only: whole pixel rows; group_norm_silu/rows.py)
    # or "slab" (both layouts, persistent, one DRAM read per pass by the counted traffic;
    # group_norm_silu/slab.py, untimed on a GPU; docs/performance.md says what is timed).
    # auto: groups (the design timed on GPUs), until a GPU run says which design wins.
    group_norm_silu_channels_last: str = choice("auto", "groups", "rows", "slab")
    # The U-Net's nearest-2x upsample + 3x3 conv: "subpixel" computes it as one 2x2 conv with 4x the
    # output channels on the un-upsampled input (kernels/upsample_conv.py, 2.25x fewer FLOPs, same
    # function). auto: subpixel on CPU, reference on CUDA (docs/performance.md, "Upsample conv").
    upsample_conv: str = choice("auto", "subpixel", "reference")


@dataclass
class FinetuneConfig:
    checkpoint: str = marked("", **PER_MEMBER)  # pretrained run folder or snapshot folder; "" = from scratch
    weights: str = choice("ema", "raw", **PER_MEMBER)  # which pretrained weights to start from
    budget: int = marked(1, **PER_MEMBER)  # labeled target images
    seed: int = marked(0, **PER_MEMBER)  # picks the labeled subset and the fine-tune randomness
    # fine-tune length grows with the budget: train.steps + steps_per_label * budget (same for every start)
    steps_per_label: int = 0
    # how a budget's images are drawn (hybengine/data/label_budget.py): "foreground" = among images whose
    # mask holds a class other than 0 first (still nested per seed); "any" = from the whole pool
    subset_policy: str = choice("foreground", "any")
    # A target with another number of classes than the checkpoint: keep the body and the image rows of
    # the output conv, re-initialise its mask rows for data.num_classes (false: such a target is refused)
    new_head: bool = False
    # share of each fine-tune batch given to the target's train-split IMAGES as unlabeled samples (their
    # masks are never read) with the denoising term at random sigma, keeping what pretraining learnt;
    # 0: the paper's vanilla fine-tune (mask term only)
    unlabeled_share: float = 0.0
    # > 0 (with unlabeled_share > 0 and a checkpoint): those unlabeled target images keep the START's mask
    # predictions instead of the denoising term: their mask term is distill * KL(start || model) of the class
    # probabilities at sigma_clean (Learning without Forgetting, Li & Hoiem 2016; the start is a frozen copy
    # of the checkpoint); a run from scratch has no start and trains without it; 0: off
    distill: float = 0.0
    # the seeds' 1-label subsets are distinct images while seeds < pool size (label_budget.py); still nested
    distinct_subsets: bool = False
    # the sigma the fine-tune trains and predicts at: "clean" = objective.sigma_clean; "estimate" = the noise
    # level of the target's train IMAGES (hybengine/data/noise.py: Immerkaer's estimator after normalisation,
    # median over images), measured before any label is read, fed without extra noise; the same for every start
    sigma: str = choice("clean", "estimate")


@dataclass
class SweepConfig:
    """A label-budget sweep (hybengine/finetune/sweep.py): every init x budget x seed is one fine-tune."""
    budgets: list[int] = field(default_factory=list)  # labeled images per run (0: zero-shot); empty = one fine-tune
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])  # label subsets and fine-tune randomness
    inits: list[str] = field(default_factory=list)  # "name=checkpoint folder"; "scratch" (or "name=") = none
    runner: str = choice("auto", "sequential", "batched")  # auto: measured per device (hybengine/finetune/sweep.py)
    batch_runs: int = 12  # R: most fine-tunes trained at once by the batched runner
    out_dir: str = "runs/sweep"  # runs/<init>_b<budget>_s<seed>/, per_image.csv, table.{md,csv}, plot.png
    keep_checkpoints: bool = False  # keep each fine-tune's final snapshot (predict needs one)
    class_names: list[str] = field(default_factory=list)  # report labels for classes 0..K-1; empty = numbers


@dataclass
class PredictConfig:
    """How the engine turns an image into a mask (hybengine/inference.py): `predict`, and every Dice a
    fine-tune or sweep reports (each result.json names these settings)."""
    # "tiled": overlapping tiles at the training crop, Gaussian-blended (nnU-Net, MONAI's sliding window),
    # so the model sees the context it was trained on and memory stays bounded; "whole": one forward pass
    # over the whole image (padded to the U-Net's multiple), the engine's convention before tiling
    mode: str = choice("tiled", "whole")
    tile: int = 0  # tile side in pixels; 0 = the model's training crop (data.crop of its checkpoint)
    # share of a tile's side that its neighbour also covers (nnU-Net: 0.5, MONAI: 0.25); 0.25 scored as 0.5 on the
    # scratch-assay test frames with half the tiles (docs/results/prediction/)
    overlap: float = 0.25
    batch_tiles: int = 16  # tiles per forward pass
    tta: bool = False  # test-time mirroring: average the probabilities of the image and its 3 flips
    precision: str = choice("auto", "fp32", "bf16")  # autocast; auto = bf16 on CUDA, fp32 elsewhere


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    kernels: KernelConfig = field(default_factory=KernelConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)


# ---------------------------------------------------------------------------------------------
# Merging and type checking


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Checks `value` against the annotation `tp`; strings from the command line are parsed."""
    origin = typing.get_origin(tp)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if isinstance(value, str):
            value = _parse_value(key, value) if value.strip() else []
            if not isinstance(value, list):
                value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list of {item_tp.__name__}, got {value!r}")
        return [_coerce(f"{key}[{i}]", v, item_tp) for i, v in enumerate(value)]
    if isinstance(value, str) and tp is not str:
        value = _parse_value(key, value) if value.strip() else value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        number = _number(value)
        if number is None or not math.isfinite(number) or number != int(number):
            raise ConfigError(f"{key}: expected an integer (a whole number), got {value!r}")
        return int(number)
    if tp is float:
        number = _number(value)
        if number is None:
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if not math.isfinite(number):
            raise ConfigError(f"{key}={value!r}: must be a finite number")
        return float(number)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {tp}")  # pragma: no cover - a bug in this file


def _parse_value(key: str, text: str) -> Any:
    """A value typed on the command line, read as YAML (`[1, 2]`, `1e-3`, `true`); one line if it cannot be."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        reason = " ".join(str(e).split())[:160]
        raise ConfigError(f"{key}: cannot read the value {text!r} ({reason}); write it as YAML, e.g. "
                          "[1, 2] for a list, quoted for a string") from None


def _number(value: Any) -> int | float | None:
    """A number as written: what Python's float() accepts ("1e-3", which YAML leaves a string, "1e3",
    ".5"), or an int/float; None for anything else (booleans included)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None


# Keys renamed since runs were saved with them: the old name is still read, with one log line.
RENAMED = {"train.engine": "train.backend"}


def _merge(obj: Any, values: dict[str, Any], prefix: str) -> None:
    types_ = _field_types(type(obj))
    for key, value in values.items():
        path = f"{prefix}{key}"
        if path in RENAMED:
            log.warning("config key %s was renamed %s: read as %s", path, RENAMED[path], RENAMED[path])
            path = RENAMED[path]
            key = path.rsplit(".", 1)[-1]
        if key not in types_:
            allowed = ", ".join(sorted(types_))
            raise ConfigError(f"unknown config key {path!r}; allowed keys here: {allowed}")
        tp = types_[key]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                raise ConfigError(f"{path}: expected a section (mapping), got {value!r}")
            _merge(getattr(obj, key), value, f"{path}.")
        else:
            setattr(obj, key, _coerce(path, value, tp))


def _overrides_to_dict(overrides: list[str]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form section.key=value")
        dotted, value = item.split("=", 1)
        node = tree
        *parents, leaf = dotted.strip().split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {p!r} is not a section")
        node[leaf] = value
    return tree


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                base: Config | None = None) -> Config:
    """Defaults (or `base`: a resumed run's saved config) <- YAML file <- `key=value` overrides, then
    validated."""
    cfg = copy.deepcopy(base) if base is not None else Config()
    if path:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file '{path}' does not exist")
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file '{path}' is not valid YAML: {' '.join(str(e).split())}") from None
        if not isinstance(values, dict):
            raise ConfigError(f"config file '{path}' must hold a mapping of sections")
        _merge(cfg, values, "")
    _merge(cfg, _overrides_to_dict(overrides or []), "")
    validate(cfg)
    return cfg


def config_from_dict(values: dict[str, Any]) -> Config:
    """Rebuilds a Config saved with `to_dict` (e.g. from a checkpoint), validated."""
    cfg = Config()
    _merge(cfg, values, "")
    validate(cfg)
    return cfg


def to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def dumps(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config dict as {"section.key": value}."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def marked_keys(mark: str) -> frozenset[str]:
    """The "section.key" names whose field carries `mark` (resume_free, bookkeeping, per_member)."""
    return frozenset(f"{name}.{f.name}" for name, section in _field_types(Config).items()
                     for f in dataclasses.fields(section) if f.metadata.get(mark))


def resume_free_keys() -> frozenset[str]:
    """Keys a resumed run may change (`--resume RUN train.steps=2000`); all others must stay as saved."""
    return marked_keys("resume_free")


def bookkeeping_keys() -> frozenset[str]:
    """Keys that change how a run is watched, not what it trains: a finished fine-tune stays finished."""
    return marked_keys("bookkeeping")


def per_member_keys() -> frozenset[str]:
    """Keys that may differ between the members of one batched fine-tune group."""
    return marked_keys("per_member")


def compare_saved(now: Config, saved: dict[str, Any]) -> tuple[list[str], list[str]]:
    """A run's config against the one it saved: ("key: saved -> now" for each key that differs and may not
    change on a resume, the same for the resume-free keys that differ)."""
    then = config_from_dict(saved)
    now_f, then_f = flatten(to_dict(now)), flatten(to_dict(then))
    changed = config_diff(now_f, then_f)
    detail = {k: f"{k}: {then_f.get(k)!r} -> {now_f.get(k)!r}" for k in changed}
    free = resume_free_keys()
    return [detail[k] for k in changed if k not in free], [detail[k] for k in changed if k in free]


def _current_names(flat: dict[str, Any]) -> dict[str, Any]:
    """A flattened config with renamed keys (RENAMED) under their current names."""
    return {RENAMED.get(k, k): v for k, v in flat.items()}


def config_diff(now: Config | dict[str, Any], then: Config | dict[str, Any],
                ignore: frozenset[str] | set[str] = frozenset()) -> list[str]:
    """The sorted "section.key" names whose values differ between two configs, less `ignore`."""
    a, b = (_current_names(flatten(c if isinstance(c, dict) else to_dict(c))) for c in (now, then))
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k) and k not in ignore)


# ---------------------------------------------------------------------------------------------
# Value checks


MAX_SEED = 2**32 // 1000 - 1000  # seed * 1000 + rank (+ 1) seeds numpy, which takes values below 2**32


def _check(ok: bool, msg: str) -> None:
    if not ok:
        raise ConfigError(msg)


def validate(cfg: Config) -> None:
    for section in dataclasses.fields(cfg):
        sub = getattr(cfg, section.name)
        for f in dataclasses.fields(sub):
            allowed = f.metadata.get("choices")
            value = getattr(sub, f.name)
            if allowed and value not in allowed:
                raise ConfigError(
                    f"{section.name}.{f.name}={value!r} is not allowed; choose one of: {', '.join(allowed)}"
                )
    d, m, o, t, op = cfg.data, cfg.model, cfg.objective, cfg.train, cfg.optim
    _check(d.num_classes >= 2, f"data.num_classes={d.num_classes}: need at least 2 classes")
    _check(d.image_channels in (1, 3), f"data.image_channels={d.image_channels}: must be 1 or 3")
    _check(not (0 <= d.ignore_index < d.num_classes),
           f"data.ignore_index={d.ignore_index} collides with a class in 0..{d.num_classes - 1}")
    _check(d.mask_format != "binary255" or d.num_classes == 2,
           f"data.mask_format=binary255 gives 2 classes, but data.num_classes={d.num_classes}; set it to 2")
    _check(d.crop >= 8, f"data.crop={d.crop}: must be at least 8")
    _check(d.num_workers >= 0, f"data.num_workers={d.num_workers}: must be >= 0")
    _check(0 <= d.intensity_jitter < 1, f"data.intensity_jitter={d.intensity_jitter}: must be in [0, 1)")
    _check(min(d.aug_scale, d.aug_rotate, d.aug_elastic, d.aug_gamma, d.aug_noise, d.aug_blur) >= 0,
           "data.aug_scale, aug_rotate, aug_elastic, aug_gamma, aug_noise and aug_blur must be >= 0 (0 = off)")
    _check(m.groups >= 1, f"model.groups={m.groups}: must be >= 1")
    _check(m.channels >= 0 and m.num_res_blocks >= 0, "model.channels and model.num_res_blocks must be >= 0")
    _check(all(c >= 1 for c in m.channel_mult), f"model.channel_mult={m.channel_mult}: entries must be >= 1")
    _check(0 <= m.dropout < 1, f"model.dropout={m.dropout}: must be in [0, 1)")
    _check(o.P_std > 0 and o.sigma_data > 0 and o.sigma_clean > 0,
           "objective.P_std, objective.sigma_data and objective.sigma_clean must be > 0")
    _check(o.w_mask >= 0 and o.dice_weight >= 0, "objective.w_mask and objective.dice_weight must be >= 0")
    _check(0 <= o.clean_share <= 1, f"objective.clean_share={o.clean_share}: must be in [0, 1]")
    _check(0 <= op.min_lr_ratio <= 1, f"optim.min_lr_ratio={op.min_lr_ratio}: must be in [0, 1]")
    _check(op.lr > 0, f"optim.lr={op.lr}: must be > 0")
    _check(0 <= op.body_lr_scale <= 1, f"optim.body_lr_scale={op.body_lr_scale}: must be in [0, 1]")
    _check(0 <= op.beta1 < 1 and 0 <= op.beta2 < 1, "optim.beta1 and optim.beta2 must be in [0, 1)")
    _check(op.warmup_steps >= 0 and op.grad_clip >= 0 and op.weight_decay >= 0,
           "optim.warmup_steps, optim.grad_clip and optim.weight_decay must be >= 0")
    _check(t.steps >= 1, f"train.steps={t.steps}: must be >= 1")
    _check(t.batch_size >= 1, f"train.batch_size={t.batch_size}: must be >= 1")
    _check(t.grad_accum >= 1, f"train.grad_accum={t.grad_accum}: must be >= 1")
    _check(t.ckpt_every >= 0 and t.keep_last >= 1, "train.ckpt_every must be >= 0 and train.keep_last >= 1")
    _check(t.log_every >= 1 and t.max_bad_steps >= 1, "train.log_every and train.max_bad_steps must be >= 1")
    _check(t.ema_halflife_steps >= 0, f"train.ema_halflife_steps={t.ema_halflife_steps}: must be >= 0")
    _check(t.threads >= 0, f"train.threads={t.threads}: must be >= 0")
    _check(m.compile or not m.compile_step, "model.compile_step=true needs model.compile=true")
    _check(m.compile or not t.cuda_graphs, "train.cuda_graphs=true needs model.compile=true (it is a compile mode)")
    _check(cfg.finetune.budget >= 0, f"finetune.budget={cfg.finetune.budget}: must be >= 0 (0: the start "
                                     "as it is, no fine-tune)")
    _check(0 <= d.unlabeled_share < 1, f"data.unlabeled_share={d.unlabeled_share}: must be in [0, 1)")
    _check(0 <= cfg.finetune.unlabeled_share < 1,
           f"finetune.unlabeled_share={cfg.finetune.unlabeled_share}: must be in [0, 1)")
    _check(cfg.finetune.distill >= 0, f"finetune.distill={cfg.finetune.distill}: must be >= 0")
    _check(cfg.finetune.distill == 0 or cfg.finetune.unlabeled_share > 0,
           f"finetune.distill={cfg.finetune.distill} acts on the unlabeled target images of each batch: set "
           "finetune.unlabeled_share > 0 too (e.g. 0.5)")
    for key, seed in (("train.seed", t.seed), ("finetune.seed", cfg.finetune.seed),
                      *((f"sweep.seeds[{i}]", s) for i, s in enumerate(cfg.sweep.seeds))):
        _check(0 <= seed <= MAX_SEED, f"{key}={seed}: must be in 0..{MAX_SEED} (each rank seeds numpy "
                                      "with seed * 1000 + rank, which must stay below 2**32)")
    for key, folder in (("train.out_dir", t.out_dir), ("sweep.out_dir", cfg.sweep.out_dir)):
        _check(folder.strip() not in ("", "."),
               f"{key}={folder!r}: name a run folder of its own (e.g. runs/my_run); an empty or '.' "
               "folder would write the run into the current directory")
    _check_model(cfg)
    pr = cfg.predict
    _check(0 <= pr.overlap < 1, f"predict.overlap={pr.overlap}: must be in [0, 1)")
    _check(pr.tile >= 0 and pr.batch_tiles >= 1, "predict.tile must be >= 0 and predict.batch_tiles >= 1")
    _check(cfg.finetune.steps_per_label >= 0,
           f"finetune.steps_per_label={cfg.finetune.steps_per_label}: must be >= 0")
    if t.backend in ("deepspeed", "auto"):
        _check(t.deepspeed_config == "" or t.deepspeed_config.endswith(".json"),
               f"train.deepspeed_config={t.deepspeed_config!r}: must name a DeepSpeed .json file")


def _check_model(cfg: Config) -> None:
    """The architecture the U-Net would be built with (preset filled in) fits data.crop, so that a bad
    width or crop fails here, at --dry-run, not at run time."""
    m = apply_model_preset(cfg.model)
    factor = 2 ** (len(m.channel_mult) - 1)
    _check(cfg.data.crop % factor == 0,
           f"data.crop={cfg.data.crop} must be a multiple of {factor} (2 ** (levels - 1) for "
           f"model.channel_mult={m.channel_mult}); e.g. data.crop={max(factor, cfg.data.crop // factor * factor)}")


def apply_model_preset(m: ModelConfig) -> ModelConfig:
    """Fills the fields left at 0/empty from the preset; returns a new ModelConfig."""
    presets = {
        "tiny": dict(channels=32, channel_mult=[1, 2], num_res_blocks=1, attn_levels=[]),
        "small": dict(channels=64, channel_mult=[1, 2, 2], num_res_blocks=2, attn_levels=[2]),
        "base": dict(channels=128, channel_mult=[1, 2, 2, 4], num_res_blocks=2, attn_levels=[2, 3]),
    }[m.preset]
    out = dataclasses.replace(m)
    for key in ("channels", "channel_mult", "num_res_blocks"):
        if not getattr(out, key):
            setattr(out, key, presets[key])
    if not m.channels and not m.attn_levels:  # attention follows the preset unless the width is custom
        out.attn_levels = presets["attn_levels"]
    for mult in out.channel_mult:
        width = out.channels * mult
        _check(width % out.groups == 0,
               f"model.groups={out.groups} does not divide the width {width} (model.channels={out.channels} x "
               f"channel_mult {mult}); choose model.channels and model.groups so that it does")
    _check(all(0 <= lv < len(out.channel_mult) for lv in out.attn_levels),
           f"model.attn_levels={out.attn_levels}: levels run 0..{len(out.channel_mult) - 1}")
    return out

