"""Decoding image and mask files into numpy arrays, and intensity normalisation.

Images: PNG / JPEG / TIFF, 8- or 16-bit, gray or RGB(A). They come back as float32 (I, H, W)
holding the RAW values (no rescaling: 16-bit stays 0..65535) plus the dtype's maximum, so that
`normalize` can use either the per-image percentiles or the dtype range. Gray is repeated when I=3;
alpha is dropped. With I=1, an RGB file whose three channels are equal (gray saved as RGB) becomes
luma (ITU-R BT.601 weights, i.e. that gray); one whose channels differ is refused with a `FileProblem`
naming `data.image_channels`: colour is never turned into gray without the user asking (set
data.image_channels=3, or save the images as grayscale).
Masks: single-channel PNG, class index (8- or 16-bit), or 0/255 binary mapped to 0/1.

Every reader raises `FileProblem` with a one-line reason; the folder scan collects them.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image, UnidentifiedImageError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
MASK_EXTENSIONS = (".png",)
LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R BT.601 luma weights
PERCENTILES = (0.5, 99.5)  # per-image percentiles mapped to -1 and +1
CLIP = 1.5  # percentile-normalised values are clipped to [-CLIP, CLIP]


COLOUR_AS_GRAY = ("RGB image whose colour channels differ, but data.image_channels=1: set data.image_channels=3 "
                  "to train and predict on colour, or save the images as grayscale (hybengine does not turn "
                  "colour into gray on its own)")


class FileProblem(Exception):
    """A file that cannot be used; str() is the reason (the caller adds the file name)."""


def png_header(path: Path) -> tuple[int, int] | None:
    """(bit depth, colour type) from a PNG's IHDR chunk, or None if the header is not PNG."""
    with open(path, "rb") as f:
        head = f.read(29)
    if len(head) < 29 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return None
    return head[24], head[25]


def _pil_array(path: Path, palette_indices: bool) -> np.ndarray:
    """Decodes with Pillow, fully (a truncated file fails here, not later), keeping 16 bits.
    palette_indices: a palette PNG gives its indices (class-index masks), else its colours."""
    if path.suffix.lower() == ".png":
        header = png_header(path)
        if header is None:
            raise FileProblem("not a valid PNG file (bad signature or header: corrupt, truncated "
                              "or misnamed)")
        depth, colour = header
        if depth == 16 and colour in (2, 4, 6):  # Pillow would silently keep only 8 of 16 bits
            raise FileProblem("16-bit colour PNG: Pillow cannot decode it without truncating to 8 bits; "
                              "save it as 16-bit TIFF or as 16-bit grayscale PNG")
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode == "P" and not palette_indices:
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
            elif im.mode == "1":
                im = im.convert("L")  # 0/255
            elif im.mode == "CMYK":
                im = im.convert("RGB")
            arr = np.array(im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, zlib.error) as e:
        raise FileProblem(f"unreadable or corrupt ({type(e).__name__}: {e})") from None
    if arr.dtype == np.int32 and arr.size and (arr.min() < 0 or arr.max() > 65535):
        raise FileProblem(f"32-bit integer pixel values (range {arr.min()}..{arr.max()}); "
                          "expected 8 or 16 bit")
    if arr.dtype == np.int32:  # mode "I": how older Pillow versions open 16-bit gray PNG
        arr = arr.astype(np.uint16)
    return arr


def _tiff_array(path: Path) -> np.ndarray:
    try:
        arr = tifffile.imread(path)
    except Exception as e:  # tifffile raises many types (TiffFileError, ValueError, struct.error ...)
        raise FileProblem(f"unreadable or corrupt TIFF ({type(e).__name__}: {e})") from None
    while arr.ndim > 2 and arr.shape[0] == 1:  # (1, H, W) or (1, 1, H, W): one page, one sample
        arr = arr[0]
    return arr


def read_raw(path: str | Path, palette_indices: bool = False) -> np.ndarray:
    """The file's pixels as stored: uint8 / uint16, (H, W) or (H, W, C)."""
    path = Path(path)
    ext = path.suffix.lower()
    if ext in (".tif", ".tiff"):
        arr = _tiff_array(path)
    elif ext in (".png", ".jpg", ".jpeg"):
        arr = _pil_array(path, palette_indices)
    else:
        raise FileProblem(f"unsupported extension '{path.suffix}'")
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    if arr.dtype not in (np.uint8, np.uint16):
        raise FileProblem(f"unsupported pixel type {arr.dtype}; expected 8- or 16-bit unsigned integers")
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] in (2, 3, 4))):
        raise FileProblem(f"unsupported array layout {arr.shape}; expected (H, W) gray or (H, W, 3) RGB")
    if min(arr.shape[:2]) == 0:
        raise FileProblem(f"empty image of shape {arr.shape}")
    return arr


def read_image(path: str | Path, channels: int) -> tuple[np.ndarray, float]:
    """Image file -> (float32 (channels, H, W) raw values, dtype maximum 255 or 65535)."""
    return as_channels(read_raw(path), channels)


def as_channels(arr: np.ndarray, channels: int) -> tuple[np.ndarray, float]:
    """Raw (H, W) or (H, W, C) pixels -> (float32 (channels, H, W), dtype maximum)."""
    dtype_max = float(np.iinfo(arr.dtype).max)
    x = arr.astype(np.float32)
    if x.ndim == 3:
        if x.shape[-1] == 2:  # gray + alpha
            x = x[..., 0]
        else:
            x = x[..., :3]  # drop alpha
    if x.ndim == 2:
        x = np.repeat(x[None], channels, axis=0)
    elif channels == 1:
        if not (arr[..., 1:3] == arr[..., :1]).all():
            raise FileProblem(COLOUR_AS_GRAY)
        x = np.tensordot(x, LUMA, axes=([-1], [0]))[None].astype(np.float32)
    else:
        x = np.ascontiguousarray(x.transpose(2, 0, 1))
    return x, dtype_max


def read_mask(path: str | Path, mask_format: str) -> np.ndarray:
    """Mask file -> int32 (H, W) labels. binary255: 0 -> 0, 255 -> 1, others left as they are
    (the caller reports them). A colour mask is accepted only if its channels are equal."""
    arr = read_raw(path, palette_indices=True)
    if arr.ndim == 3:
        colour = arr[..., :3] if arr.shape[-1] >= 3 else arr[..., :1]
        if not (colour == colour[..., :1]).all():
            raise FileProblem(f"colour mask ({arr.shape[-1]} channels with different values); "
                              "save masks as single-channel class-index PNG")
        arr = colour[..., 0]
    mask = arr.astype(np.int32)
    if mask_format == "binary255":
        mask = np.where(mask == 255, 1, mask)
    return mask


def label_problems(mask: np.ndarray, num_classes: int, ignore_index: int, mask_format: str) -> str | None:
    """A one-line description of the values a mask must not hold, or None."""
    values = np.unique(mask)
    if mask_format == "binary255":
        bad = values[(values != 0) & (values != 1)]  # 255 was already mapped to 1
        if bad.size:
            return f"binary mask holds values {_fmt(bad)} besides 0 and 255 (mask_format=binary255)"
        return None
    bad = values[((values < 0) | (values >= num_classes)) & (values != ignore_index)]
    if bad.size:
        return (f"labels {_fmt(bad)} outside 0..{num_classes - 1} (num_classes={num_classes}, "
                f"ignore_index={ignore_index})")
    return None


def _fmt(values: np.ndarray, limit: int = 8) -> str:
    shown = ", ".join(str(int(v)) for v in values[:limit])
    return f"[{shown}{', ...' if values.size > limit else ''}]"


@dataclass(frozen=True)
class NormParams:
    """y = (x - offset) * scale + shift, in float32, then clipped to [-clip, clip] (clip=0: none).
    One set per image; the DALI pipeline applies the same four numbers."""
    offset: float
    scale: float
    shift: float
    clip: float


def norm_params(x: np.ndarray, how: str, dtype_max: float) -> NormParams:
    """percentile: the image's own 0.5 / 99.5 percentiles map to -1 / +1, clipped to [-1.5, 1.5]
    (robust to the 16-bit microscope range, where the signal uses a small part of 0..65535);
    dtype: x / dtype_max * 2 - 1."""
    if how == "dtype":
        return NormParams(0.0, float(np.float32(2.0 / dtype_max)), -1.0, 0.0)
    lo, hi = np.percentile(x, PERCENTILES)
    if hi - lo < 1e-6:  # a flat image: no contrast to stretch, all zeros
        return NormParams(float(np.float32(lo)), 0.0, 0.0, CLIP)
    return NormParams(float(np.float32(lo)), float(np.float32(2.0 / (hi - lo))), -1.0, CLIP)


def apply_norm(x: np.ndarray, p: NormParams) -> np.ndarray:
    y = (x - np.float32(p.offset)) * np.float32(p.scale) + np.float32(p.shift)
    if p.clip:
        y = np.clip(y, -np.float32(p.clip), np.float32(p.clip))
    return y.astype(np.float32, copy=False)


def normalize(x: np.ndarray, how: str, dtype_max: float) -> np.ndarray:
    """Raw values -> roughly [-1, 1], float32 (see `norm_params`)."""
    return apply_norm(x, norm_params(x, how, dtype_max))
