"""DALI training pipeline over the same folder datasets, with the torch path's exact semantics.

What DALI does: decode (`fn.decoders.image`, `mixed` = GPU on a GPU, else `cpu`), crop, the
dihedral transform (conditional transpose, then flips), normalisation and intensity jitter on the
image, the same geometry on the mask, layout to (B, I, c, c) float32 and (B, c, c) int64, through
the PyTorch plugin iterator.

What Python does: the per-batch plan, fed through one `fn.external_source`: which files (the
shared `ShardedEpochStream`: same seeded epochs, rank shards, no partial batch, resume by
arithmetic as the torch loader; `rank`/`world_size` play the role of DALI's `shard_id`/
`num_shards`), their encoded bytes, and their random parameters, drawn by the SAME
`sample_params(sample_rng(seed, epoch, index), ...)` as the torch path. So image and mask get the
same parameters by construction, and for the same files DALI and torch give the same tensors
(bit-identical where the decoders agree; see `plan_problems` for when they cannot).

Unlabeled images (data.unlabeled_share > 0; hybengine/data/unlabeled.py): the plan walks the torch path's
`MixedStream`, so the last k samples of each batch are unlabeled images, drawn from their own stream
(`sample_rng(seed + SEED_OFFSET, epoch, i)`) with their own normalisation. Each sample carries an explicit
has_mask column; an unlabeled one decodes a placeholder mask (an all-zero PNG of its size, encoded once
per size; no mask file is opened) that the graph sets to ignore_index after every geometric op, and it
skips the few-label ops, as on the torch path. `plan_problems` judges the unlabeled files too.

Bits: images are decoded as uint16 when any image is 16-bit (DALI keeps all 16 bits then; 8-bit
files are scaled by 257 and their normalisation by 1/257), else as uint8. Masks must be plain
8-bit grayscale PNG (DALI would turn palette indices into colours and scale 16-bit labels).
DALI has no reflect padding: files smaller than the crop stay on the torch path.

Few-label augmentation (data.aug_*; hybengine/data/augment.py), with the torch path's parameters fed
per sample: zoom and rotation as one `fn.warp_affine` for image (linear) and mask (nearest, filled
with ignore_index), gamma by `math.pow` on the sample's own range, `fn.gaussian_blur`, and the torch
path's own noise added; same masks and images to float rounding (tests/test_data_dali.py). DALI has
no elastic deformation on the CPU: data.aug_elastic > 0 stays on the torch path.
"""
from __future__ import annotations

import importlib.util
import io
import logging
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from hybengine.config import DataConfig
from hybengine.data.augment import FewLabelAug, WarpParams, as_transpose_flips, sample_params, sample_rng, sample_warp
from hybengine.data.epoch_stream import BatchCounter, ShardedEpochStream
from hybengine.data.errors import DatasetError
from hybengine.data.folder_dataset import FileInfo, FolderScan
from hybengine.data.image_io import LUMA, FileProblem, read_mask, read_raw
from hybengine.data.unlabeled import SEED_OFFSET, MixedStream, UnlabeledScan

log = logging.getLogger("hybengine.data")
_OUTPUTS = ("image", "mask")


def dali_installed() -> bool:
    return importlib.util.find_spec("nvidia.dali") is not None


def _some(names: list[str]) -> str:
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def _image_problems(infos: dict[str, FileInfo], what: str, crop: int) -> list[str]:
    """The image files (name -> info) DALI cannot crop or decode as the torch path does."""
    problems = []
    small = [n for n, i in infos.items() if min(i.height, i.width) < crop]
    if small:
        problems.append(f"{len(small)} {what} smaller than data.crop={crop} need reflect padding, "
                        f"which DALI lacks: {_some(small)}")
    alpha = [n for n, i in infos.items() if i.file_channels in (2, 4)]
    if alpha:
        problems.append(f"{len(alpha)} {what} have an alpha channel: {_some(alpha)}")
    return problems


def plan_problems(scan: FolderScan, cfg: DataConfig, unlabeled: UnlabeledScan | None = None) -> list[str]:
    """Why DALI cannot reproduce the torch path on these files (empty list: it can); `unlabeled`: the
    unlabeled images mixed into the batches, judged the same way (they have no mask to judge)."""
    problems = _image_problems(scan.info, "image(s)", cfg.crop)
    masks = [s for s, i in scan.info.items() if not i.mask_gray8_png]
    if masks:
        problems.append(f"{len(masks)} mask(s) are not plain 8-bit grayscale PNG (palette, 1- or 16-bit "
                        f"or colour), which DALI would not decode as class indices: {_some(masks)}")
    if cfg.augment and cfg.aug_elastic:
        problems.append(f"data.aug_elastic={cfg.aug_elastic}: DALI has no elastic deformation on the CPU (its "
                        "zoom, rotation, gamma, blur and noise are supported)")
    if unlabeled is not None:
        named = {str(f): i for f, i in zip(unlabeled.files, unlabeled.info, strict=True)}
        problems += _image_problems(named, "unlabeled image(s)", cfg.crop)
    return problems


@dataclass(frozen=True)
class _Sample:
    """One item of a batch: its files (mask None: an unlabeled image), scan info and augmentation stream."""
    image: Path
    mask: Path | None
    info: FileInfo
    rng: np.random.Generator


class _BatchPlan:
    """The external source: called once per batch (in order, ahead of use when DALI prefetches),
    returns the encoded files and the per-sample parameters of the next batch of this rank.
    With `unlabeled` and k > 0 the items are `MixedStream`'s: the last k of each batch are unlabeled
    images, with a placeholder mask (zeros, the image's size; no mask file is opened) and has_mask False."""

    def __init__(self, scan: FolderScan, cfg: DataConfig, batch_size: int, seed: int, rank: int,
                 world_size: int, start_batch: int, decode_bits: int, unlabeled: UnlabeledScan | None = None,
                 k: int = 0):
        self.scan, self.cfg, self.seed, self.decode_bits = scan, cfg, seed, decode_bits
        self.batch_size = batch_size
        self.unlabeled = unlabeled if k else None
        if self.unlabeled is not None:
            self.items = iter(MixedStream(len(scan.stems), len(self.unlabeled.files), batch_size, k, seed, rank,
                                          world_size, start_batch))
        else:
            self.items = iter(ShardedEpochStream(len(scan.stems), batch_size, seed, rank, world_size, start_batch))
        self.next_batch = start_batch
        self.recent: OrderedDict[int, list[tuple[Path, Path | None]]] = OrderedDict()  # for error messages
        self._placeholders: dict[tuple[int, int], np.ndarray] = {}  # (h, w) -> encoded all-zero PNG
        few = FewLabelAug.from_config(cfg)
        self.few = few if cfg.augment and few != FewLabelAug() else None  # extra columns only when on

    def _sample(self, epoch: int, i: int) -> _Sample:
        """Item i of `self.items` (MixedDataset's numbering: the unlabeled ones follow the labeled)."""
        n = len(self.scan.stems)
        if i < n:
            stem = self.scan.stems[i]
            return _Sample(self.scan.images[stem], self.scan.masks[stem], self.scan.info[stem],
                           sample_rng(self.seed, epoch, i))
        j = i - n  # UnlabeledImages' stream: its own seed
        return _Sample(self.unlabeled.files[j], None, self.unlabeled.info[j],
                       sample_rng(self.seed + SEED_OFFSET, epoch, j))

    def _placeholder(self, h: int, w: int) -> np.ndarray:
        """An encoded 8-bit gray PNG of zeros, (h, w): the mask input of an unlabeled sample."""
        if (h, w) not in self._placeholders:
            buf = io.BytesIO()
            Image.fromarray(np.zeros((h, w), np.uint8)).save(buf, format="PNG")
            self._placeholders[(h, w)] = np.frombuffer(buf.getvalue(), np.uint8)
        return self._placeholders[(h, w)]

    def __call__(self):
        cols: dict[str, list[np.ndarray]] = {k: [] for k in ("img", "msk", "anchor", "t", "h", "v", "norm", "jit",
                                                             "has_mask", *FEW_COLUMNS)}
        files = []
        c = self.cfg
        for _ in range(self.batch_size):
            s = self._sample(*next(self.items))
            info = s.info
            files.append((s.image, s.mask))
            p = sample_params(s.rng, info.height, info.width, c.crop, c.augment, c.intensity_jitter)
            if self.few is not None:  # drawn after p from the same stream, as the torch path draws them;
                # unlabeled samples get none (UnlabeledImages), and the graph skips them (has_mask False)
                self._few_columns(cols, p, sample_warp(s.rng, self.few) if s.mask is not None else WarpParams())
            t, h, v = as_transpose_flips(p)
            n = info.norm
            if self.decode_bits == 16 and info.bits == 8:  # decoded as x * 257
                n = type(n)(n.offset * 257.0, float(np.float32(n.scale / 257.0)), n.shift, n.clip)
            cols["img"].append(np.fromfile(s.image, np.uint8))
            cols["msk"].append(np.fromfile(s.mask, np.uint8) if s.mask is not None
                               else self._placeholder(info.height, info.width))
            cols["anchor"].append(np.array([p.top, p.left], np.int32))
            cols["t"].append(np.array(t, np.bool_))
            cols["h"].append(np.array(h, np.int32))
            cols["v"].append(np.array(v, np.int32))
            cols["norm"].append(np.array([n.offset, n.scale, n.shift], np.float32))
            cols["jit"].append(np.array([p.contrast, p.brightness], np.float32))
            cols["has_mask"].append(np.array(s.mask is not None, np.bool_))
        self.recent[self.next_batch] = files
        if self.few is None:
            cols = {k: v for k, v in cols.items() if k not in FEW_COLUMNS}
        while len(self.recent) > 8:
            self.recent.popitem(last=False)
        self.next_batch += 1
        return tuple(cols.values())

    def _few_columns(self, cols: dict, p, w: WarpParams) -> None:
        """The few-label parameters of one sample as DALI inputs: warp_affine's matrix, gamma, blur, noise."""
        crop = self.cfg.crop
        h = crop / 2  # DALI samples at pixel centres (i + 0.5); the torch path's grid centre is (crop - 1) / 2
        cos, sin = np.cos(w.angle) / w.zoom, np.sin(w.angle) / w.zoom
        cols["warp"].append(np.array([[cos, sin, p.left + h - (cos + sin) * h],  # destination -> source, (x, y)
                                      [-sin, cos, p.top + h - (cos - sin) * h]], np.float32))
        cols["gamma"].append(np.array(w.gamma, np.float32))
        cols["blur"].append(np.array(max(w.blur, 1e-3), np.float32))
        cols["do_blur"].append(np.array(w.blur > 0, np.bool_))
        noise = np.random.default_rng(w.noise_seed).standard_normal((self.cfg.image_channels, crop, crop),
                                                                    dtype=np.float32) * np.float32(w.noise)
        cols["noise"].append(np.ascontiguousarray(noise.transpose(1, 2, 0)))  # HWC, the pipeline's layout


FEW_COLUMNS = ("warp", "gamma", "blur", "do_blur", "noise")  # external-source columns of the few-label ops


def build_pipeline(plan: _BatchPlan, cfg: DataConfig, file_channels: set[int], device: str,
                   device_id: int | None, num_threads: int):
    """The DALI pipeline: `device` "cpu" (device_id None works without a GPU) or "mixed" (GPU)."""
    from nvidia.dali import fn, pipeline_def, types
    from nvidia.dali import math as dmath

    luma = cfg.image_channels == 1 and file_channels != {1}
    out_type = types.GRAY if cfg.image_channels == 1 and not luma else types.RGB
    img_dtype = types.UINT16 if plan.decode_bits == 16 else types.UINT8
    crop = np.array([cfg.crop, cfg.crop], np.int32)
    few = plan.few
    warps = few is not None and few.warps

    @pipeline_def(batch_size=plan.batch_size, num_threads=num_threads, device_id=device_id,
                  enable_conditionals=True, prefetch_queue_depth=2, seed=plan.seed % 2**31)
    def pipeline():
        cols = fn.external_source(source=plan, num_outputs=9 + (len(FEW_COLUMNS) if few else 0), batch=True)
        img, msk, anchor, t, h, v, norm, jit, has_mask = cols[:9]
        x = fn.decoders.image(img, device=device, output_type=out_type, dtype=img_dtype)
        m = fn.decoders.image(msk, device=device, output_type=types.GRAY, dtype=types.UINT8)
        if device == "mixed":  # arithmetic operands on the GPU with the data
            norm, jit = norm.gpu(), jit.gpu()
        if cfg.mask_format == "binary255":  # 0/255 -> 0/1 before a warp fills ignore_index
            m = m // 255
        if not warps:
            x = fn.slice(x, start=anchor, shape=crop, axes=[0, 1])  # absolute window: exact, as numpy slicing
            m = fn.slice(m, start=anchor, shape=crop, axes=[0, 1])
        if luma:  # RGB -> luma with the torch path's weights, before normalisation
            x = x[:, :, 0:1] * float(LUMA[0]) + x[:, :, 1:2] * float(LUMA[1]) + x[:, :, 2:3] * float(LUMA[2])
        x = (x - norm[0]) * norm[1] + norm[2]
        if cfg.normalize == "percentile":
            x = dmath.clamp(x, -1.5, 1.5)
        if warps:  # zoom + rotation: one affine map for both, after normalisation as on the torch path;
            warp = cols[9]  # labeled samples only: an unlabeled one gets the plain crop (normalisation is per pixel)
            if has_mask:  # (inside a conditional, per-sample inputs go in as positional inputs)
                x = fn.warp_affine(x, warp, size=[cfg.crop, cfg.crop], interp_type=types.INTERP_LINEAR)
                m = fn.warp_affine(m, warp, size=[cfg.crop, cfg.crop], interp_type=types.INTERP_NN,
                                   fill_value=float(cfg.ignore_index))
            else:
                x = fn.slice(x, anchor, crop, axes=[0, 1])
                m = fn.slice(m, anchor, crop, axes=[0, 1])
        if t:
            x = fn.transpose(x, perm=[1, 0, 2], transpose_layout=False)
            m = fn.transpose(m, perm=[1, 0, 2], transpose_layout=False)
        x = fn.flip(x, horizontal=h, vertical=v)
        m = fn.flip(m, horizontal=h, vertical=v)
        x = x * jit[0] + jit[1]  # intensity jitter: image only
        if few:  # image only, in the torch path's order: gamma on the sample's own range, blur, noise;
            gamma, blur, do_blur, noise = cols[10:]  # labeled samples only, as on the torch path
            if has_mask:
                if few.gamma:
                    lo, hi = fn.reductions.min(x), fn.reductions.max(x)
                    x = dmath.pow((x - lo) / dmath.max(hi - lo, 1e-30), gamma) * (hi - lo) + lo
                if few.blur:
                    if do_blur:
                        x = fn.gaussian_blur(x, sigma=blur)
                if few.noise:
                    x = x + noise
        x = fn.transpose(x, perm=[2, 0, 1])
        m = fn.cast(m[:, :, 0], dtype=types.INT64)
        if not has_mask:  # after every geometric op (and binary255's // 255): ignore_index throughout
            m = m * 0 + cfg.ignore_index
        return fn.cast(x, dtype=types.FLOAT), m

    return pipeline()


def _dali_summary(text: str) -> str:
    """'Error in CPU operator `fn.decoders.image` ... encountered: <cause>' -> one line."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    where = next((ln for ln in lines if ln.startswith("Error in")), "")
    after = lines.index("encountered:") + 1 if "encountered:" in lines else len(lines)
    cause = lines[after] if after < len(lines) else (lines[0] if lines else "unknown error")
    return f"{where.rstrip(',')}: {cause}" if where else cause


class DaliTrainLoader(BatchCounter):
    """DALI counterpart of `TrainLoader`: same items, order, parameters, state_dict and policy; with
    `unlabeled` and `unlabeled_k` > 0, the last unlabeled_k samples of each batch are unlabeled images
    with an all-ignore_index mask, as `TrainLoader` mixes them (hybengine/data/unlabeled.py)."""

    def __init__(self, scan: FolderScan, cfg: DataConfig, batch_size: int, seed: int, rank: int = 0,
                 world_size: int = 1, device: str = "cpu", num_threads: int = 1,
                 unlabeled: UnlabeledScan | None = None, unlabeled_k: int = 0):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} is outside 0..world_size-1 (world_size={world_size})")
        self.unlabeled_k = unlabeled_k if unlabeled is not None else 0
        self.unlabeled = unlabeled if self.unlabeled_k else None
        problems = plan_problems(scan, cfg, self.unlabeled)
        if problems:
            also = " and its unlabeled images" if self.unlabeled is not None else ""
            raise DatasetError.listing(
                f"data.loader=dali cannot read {cfg.root}/{cfg.train_split}{also} as the torch path does", problems,
                "Use data.loader=torch (or auto), or convert the files as described.")
        self.scan, self.cfg, self.batch_size, self.seed = scan, cfg, batch_size, seed
        self.rank, self.world_size, self.device, self.num_threads = rank, world_size, device, num_threads
        self.num_items = len(scan.stems)
        if self.unlabeled_k:
            self.labeled_per_batch = batch_size - self.unlabeled_k
        infos = [*scan.info.values(), *(self.unlabeled.info if self.unlabeled is not None else [])]
        self.decode_bits = 16 if any(i.bits == 16 for i in infos) else 8
        self._channels = {i.file_channels for i in infos}
        self.device_id = torch.cuda.current_device() if device == "mixed" else None
        self._batch = 0
        self._it = None
        self._plan: _BatchPlan | None = None

    def _iterator(self):
        from nvidia.dali.plugin.pytorch import DALIGenericIterator

        self._plan = _BatchPlan(self.scan, self.cfg, self.batch_size, self.seed, self.rank, self.world_size,
                                self._batch, self.decode_bits, self.unlabeled, self.unlabeled_k)
        pipe = build_pipeline(self._plan, self.cfg, self._channels, self.device, self.device_id, self.num_threads)
        return DALIGenericIterator([pipe], list(_OUTPUTS), auto_reset=False)

    def __iter__(self) -> DaliTrainLoader:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        try:
            if self._it is None:
                self._it = self._iterator()
            out = next(self._it)[0]
        except (RuntimeError, ValueError) as e:
            explained = self._explain(e)
            self.close()  # a DALI pipeline that failed is no longer usable
            raise explained from e
        self._batch += 1
        return out["image"], out["mask"]

    def _explain(self, err: Exception) -> DatasetError:
        """DALI's error names no file: name the files of the batches in flight, and the ones that
        fail to read here."""
        pairs = [] if self._plan is None else [
            f for b, fs in self._plan.recent.items() if b >= self._batch for f in fs]
        pairs = list(dict.fromkeys(pairs))
        bad = []
        for image, mask in pairs:  # an unlabeled image has no mask (None): nothing else to read
            for path, reader in ((image, read_raw), (mask, lambda p: read_mask(p, self.cfg.mask_format))):
                if path is None:
                    continue
                try:
                    reader(path)
                except (FileProblem, OSError) as e:
                    bad.append(f"{path}: {e}")
        dali_msg = _dali_summary(str(err))
        if bad:
            return DatasetError.listing("DALI pipeline failed on unreadable files", bad,
                                       f"Replace or remove these files. (DALI said: {dali_msg[:300]})")
        files = ", ".join(image.name if mask is not None else str(image) for image, mask in pairs)  # unlabeled: path
        return DatasetError(f"DALI pipeline failed on a batch holding {files or 'unknown files'} of "
                            f"{self.cfg.root}/{self.cfg.train_split}: {dali_msg[:500]}\n"
                            "These files read fine with Pillow/tifffile: use data.loader=torch.")

    def close(self) -> None:
        self._it = None  # the pipeline and its threads go with the iterator
        self._plan = None
