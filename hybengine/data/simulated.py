"""A simulated domain pair with the paper's premise built in: the mask is a function of the image.

    python -m hybengine.data.simulated --config configs/experiments/simulated_pair.yaml

Scenes: a few touching cells (a power diagram of jittered centres, each cell an ellipse), each with one
nucleus inside; K = 3 labels: 0 background, 1 cell body (cytoplasm), 2 nucleus. One scene is rendered
by two simulated microscopes, each class with its own intensity, so the mask is determined by the
image up to the noise:

- source, fluorescence-like: dark background, dim cytoplasm stain, bright nucleus, per-cell brightness,
  slight blur, Gaussian noise;
- target, transmitted-light-like: grey background under a random linear illumination gradient, cells
  darker than the background with a bright halo just outside their edge and a bright line where two
  cells touch, nuclei darker still, smooth texture, more noise. Nucleus and cytoplasm keep their order
  against each other but the background flips from darkest to brightest: a real domain gap.

Either microscope may also mark nuclei by a ring along their inner edge (`nucleus_ring`) and a
fine-grained texture (`nucleus_texture`), drawn after everything else so that 0 (the default) leaves a
rendering bit for bit as it was. A source with bright, ringed, textured nuclei and a target whose nuclei
are as bright as the cytoplasm but still ringed and textured offers a shortcut (brightness) that the
target removes (configs/experiments/simulated_shortcut.yaml).

Everything is drawn from `numpy.random.default_rng([domain, split, seed, index])`: the same seed gives
the same files, bit for bit, offline. `write_pair` writes the layout the engine reads,
`<root>/<domain>/<split>/images|masks/<stem>.png` (8-bit grey images, class-index masks), and a
`pair.json` with the parameters; a folder whose pair.json matches is reused, one that differs is an error.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from hybengine.data.errors import DatasetError

DOMAINS = {"source": 1, "target": 2}
SPLITS = {"train": 1, "test": 2, "val": 3}


@dataclass
class SceneParams:
    size: int = 64  # image side (pixels)
    cells_min: int = 2  # cells per image (uniform in [cells_min, cells_max]); 0 cells with empty_fraction
    cells_max: int = 6
    empty_fraction: float = 0.1  # share of images with no cell (tiled data has many)
    cell_radius: tuple[float, float] = (8.0, 13.0)  # cell radius range (pixels)
    nucleus_ratio: tuple[float, float] = (0.35, 0.55)  # nucleus radius / cell radius


@dataclass
class SourceMicroscope:
    background: float = 0.05  # intensities in [0, 1]
    cytoplasm: float = 0.35
    nucleus: float = 0.85
    cell_brightness: float = 0.2  # per-cell gain drawn in 1 +- this
    blur: float = 0.6  # Gaussian blur sigma (pixels)
    noise: float = 0.03  # additive Gaussian noise std
    nucleus_ring: float = 0.0  # added along each nucleus's inner edge (negative: a dark envelope); 0: none
    nucleus_texture: float = 0.0  # std of a fine-grained texture inside nuclei; 0: none


@dataclass
class TargetMicroscope:
    background: float = 0.6
    cytoplasm: float = 0.42
    nucleus: float = 0.25
    halo: float = 0.25  # added just outside each cell edge and along touching cell borders
    halo_width: float = 1.5  # pixels
    gradient: float = 0.15  # illumination: background +- this across the image, random direction
    texture: float = 0.04  # smooth random texture inside cells (std)
    blur: float = 1.0
    noise: float = 0.05
    nucleus_ring: float = 0.0  # as SourceMicroscope's
    nucleus_texture: float = 0.0


@dataclass
class PairSpec:
    root: str = "runs/simulated_pair/data"  # written here
    seed: int = 0  # the pair's seed (scenes and renderings)
    source_train: int = 512  # source images (unlimited: any number can be drawn)
    source_test: int = 32
    source_val: int = 0  # source validation images (objective settings chosen on them; experiment/selection.py)
    target_train: int = 24  # the small labeled pool budgets draw from
    target_test: int = 32  # the fixed test set
    scene: SceneParams = field(default_factory=SceneParams)
    source: SourceMicroscope = field(default_factory=SourceMicroscope)
    target: TargetMicroscope = field(default_factory=TargetMicroscope)


def spec_from_dict(values: dict) -> PairSpec:
    """A PairSpec from a YAML mapping; unknown keys are errors naming the key."""
    spec = PairSpec()
    for key, value in (values or {}).items():
        if not hasattr(spec, key):
            raise DatasetError(f"simulate.{key}: unknown key; allowed: {', '.join(sorted(asdict(spec)))}")
        current = getattr(spec, key)
        if hasattr(current, "__dataclass_fields__"):
            for k, v in (value or {}).items():
                if not hasattr(current, k):
                    raise DatasetError(f"simulate.{key}.{k}: unknown key; allowed: "
                                       f"{', '.join(sorted(asdict(current)))}")
                setattr(current, k, tuple(v) if isinstance(v, list) else type(getattr(current, k))(v))
        else:
            setattr(spec, key, type(current)(value))
    return spec


# ---------------------------------------------------------------------------------------------
# Scenes


@dataclass
class Scene:
    labels: np.ndarray  # (H, W) uint8: 0 background, 1 cell body, 2 nucleus
    cell_id: np.ndarray  # (H, W) int: -1 background, else the owning cell
    gains: np.ndarray  # (n,) per-cell brightness draw in [-1, 1]


def draw_scene(p: SceneParams, rng: np.random.Generator) -> Scene:
    """Touching elliptical cells (power diagram of their normalised distances), one nucleus each."""
    n = 0 if rng.random() < p.empty_fraction else int(rng.integers(p.cells_min, p.cells_max + 1))
    H = W = p.size
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    if n == 0:
        return Scene(np.zeros((H, W), np.uint8), np.full((H, W), -1), np.zeros(0))
    r = rng.uniform(*p.cell_radius, n)
    # centres: a random walk so cells cluster and touch
    centres = [rng.uniform(0.25 * H, 0.75 * H, 2)]
    for i in range(1, n):
        base = centres[int(rng.integers(0, i))]
        angle = rng.uniform(0, 2 * np.pi)
        step = rng.uniform(1.2, 1.7) * r[i]
        centres.append(np.clip(base + step * np.array([np.sin(angle), np.cos(angle)]), 0, H - 1))
    c = np.stack(centres)
    theta = rng.uniform(0, np.pi, n)
    aspect = rng.uniform(0.7, 1.0, n)
    dy, dx = yy[None] - c[:, 0, None, None], xx[None] - c[:, 1, None, None]
    cos, sin = np.cos(theta)[:, None, None], np.sin(theta)[:, None, None]
    u, v = cos * dx + sin * dy, -sin * dx + cos * dy
    d = np.sqrt(u**2 + (v / aspect[:, None, None]) ** 2) / r[:, None, None]  # < 1 inside cell i's ellipse
    owner = d.argmin(0)
    inside = d.min(0) < 1
    cell_id = np.where(inside, owner, -1)
    ratio = rng.uniform(*p.nucleus_ratio, n)
    off = rng.uniform(-0.15, 0.15, (n, 2)) * r[:, None]
    nd = np.sqrt((yy[None] - (c[:, 0] + off[:, 0])[:, None, None]) ** 2
                 + (xx[None] - (c[:, 1] + off[:, 1])[:, None, None]) ** 2) / (ratio * r)[:, None, None]
    own_nd = np.take_along_axis(nd, owner[None], 0)[0]
    labels = np.where(inside, np.where(own_nd < 1, 2, 1), 0).astype(np.uint8)
    return Scene(labels, cell_id, rng.uniform(-1, 1, n))


# ---------------------------------------------------------------------------------------------
# Microscopes


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur with reflected edges (numpy only)."""
    if sigma <= 0:
        return img
    rad = max(1, int(np.ceil(3 * sigma)))
    k = np.exp(-0.5 * (np.arange(-rad, rad + 1) / sigma) ** 2)
    k /= k.sum()
    out = img
    for axis in (0, 1):
        padded = np.pad(out, [(rad, rad) if a == axis else (0, 0) for a in (0, 1)], mode="reflect")
        out = sum(k[j] * np.take(padded, np.arange(j, j + img.shape[axis]), axis=axis) for j in range(len(k)))
    return out


def render_source(scene: Scene, m: SourceMicroscope, rng: np.random.Generator) -> np.ndarray:
    """Fluorescence-like image in [0, 1], (H, W) float."""
    gain = np.where(scene.cell_id >= 0, 1 + m.cell_brightness * scene.gains[np.maximum(scene.cell_id, 0)]
                    if len(scene.gains) else 1.0, 1.0)
    level = np.array([m.background, m.cytoplasm, m.nucleus])[scene.labels]
    img = _blur(np.where(scene.labels > 0, level * gain, level) + _nucleus_marks(scene, m, rng), m.blur)
    return np.clip(img + m.noise * rng.standard_normal(img.shape), 0, 1)


def _nucleus_marks(scene: Scene, m, rng: np.random.Generator) -> np.ndarray | float:
    """The ring along each nucleus's inner edge plus the texture inside nuclei (0 when both are 0; the
    texture's draw happens only when it is on)."""
    out = 0.0
    nucleus = scene.labels == 2
    if m.nucleus_ring:
        pad = np.pad(nucleus, 1, mode="edge")
        H, W = nucleus.shape
        edge = nucleus & ~np.all([pad[1 + dy:1 + dy + H, 1 + dx:1 + dx + W]
                                  for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1))], axis=0)
        out = out + m.nucleus_ring * edge
    if m.nucleus_texture:
        grain = _blur(rng.standard_normal(nucleus.shape), 0.6)
        out = out + m.nucleus_texture * grain / max(float(grain.std()), 1e-9) * nucleus
    return out


def _edges(cell_id: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(pixels of background next to a cell, pixels of a cell next to another cell)."""
    pad = np.pad(cell_id, 1, mode="edge")
    H, W = cell_id.shape
    neigh = [pad[1 + dy:1 + dy + H, 1 + dx:1 + dx + W] for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1))]
    outside = (cell_id < 0) & np.any([n >= 0 for n in neigh], axis=0)
    between = (cell_id >= 0) & np.any([(n >= 0) & (n != cell_id) for n in neigh], axis=0)
    return outside, between


def render_target(scene: Scene, m: TargetMicroscope, rng: np.random.Generator) -> np.ndarray:
    """Transmitted-light-like image in [0, 1], (H, W) float."""
    H, W = scene.labels.shape
    yy, xx = np.mgrid[0:H, 0:W] / max(H - 1, 1) - 0.5
    angle = rng.uniform(0, 2 * np.pi)
    illum = 1 + 2 * m.gradient * (np.cos(angle) * xx + np.sin(angle) * yy)
    img = np.array([m.background, m.cytoplasm, m.nucleus])[scene.labels].astype(np.float64)
    img = img + m.texture * _blur(rng.standard_normal((H, W)), 2.0) * 2 * (scene.labels > 0)
    outside, between = _edges(scene.cell_id)
    ring = _blur((outside | between).astype(np.float64), m.halo_width / 2)
    img = img + m.halo * np.clip(ring / max(ring.max(), 1e-9), 0, 1) * (scene.labels != 2)
    img = _blur((img + _nucleus_marks(scene, m, rng)) * illum, m.blur)
    return np.clip(img + m.noise * rng.standard_normal(img.shape), 0, 1)


def draw(spec: PairSpec, domain: str, split: str, index: int) -> tuple[np.ndarray, np.ndarray]:
    """(image float (H, W) in [0, 1], mask uint8 (H, W)) of one item; deterministic in its arguments."""
    scene_rng = np.random.default_rng([DOMAINS[domain], SPLITS[split], spec.seed, index, 0])
    render_rng = np.random.default_rng([DOMAINS[domain], SPLITS[split], spec.seed, index, 1])
    scene = draw_scene(spec.scene, scene_rng)
    render = render_source if domain == "source" else render_target
    micro = spec.source if domain == "source" else spec.target
    return render(scene, micro, render_rng), scene.labels


def write_pair(spec: PairSpec) -> Path:
    """Writes (or reuses, when its pair.json matches) the whole pair under spec.root; returns the root."""
    root = Path(spec.root)
    described = asdict(spec)
    for micro in ("source", "target"):  # nucleus marks off: described as before they existed (older folders match)
        for key in ("nucleus_ring", "nucleus_texture"):
            if not described[micro][key]:
                del described[micro][key]
    info = {"spec": json.loads(json.dumps(described)), "classes": ["background", "cell body", "nucleus"],
            "data": {"num_classes": 3, "image_channels": 1, "mask_format": "index"}}
    marker = root / "pair.json"
    if marker.is_file():
        if json.loads(marker.read_text()) == info:
            return root
        raise DatasetError(f"{root} holds a simulated pair made with other parameters ({marker}); delete it or "
                           "choose another simulate.root")
    counts = {("source", "train"): spec.source_train, ("source", "test"): spec.source_test,
              ("source", "val"): spec.source_val,
              ("target", "train"): spec.target_train, ("target", "test"): spec.target_test}
    for (domain, split), n in counts.items():
        if n == 0:
            continue
        for sub in ("images", "masks"):
            (root / domain / split / sub).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            image, mask = draw(spec, domain, split, i)
            stem, base = f"{domain[0]}{split[:2]}{i:05d}", root / domain / split
            Image.fromarray(np.round(image * 255).astype(np.uint8)).save(base / "images" / f"{stem}.png")
            Image.fromarray(mask).save(base / "masks" / f"{stem}.png")
    marker.write_text(json.dumps(info, indent=2))  # written last: its presence means "complete"
    return root


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="YAML with a `simulate:` section (PairSpec fields)")
    args = p.parse_args(argv)
    try:
        values = (yaml.safe_load(Path(args.config).read_text()) or {}).get("simulate")
        if values is None:
            raise DatasetError(f"{args.config}: no `simulate:` section")
        root = write_pair(spec_from_dict(values))
    except DatasetError as e:
        print(f"simulate error: {e}", file=sys.stderr)
        return 2
    print(f"simulated pair in {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
