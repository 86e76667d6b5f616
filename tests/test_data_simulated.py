"""The simulated domain pair: deterministic per seed, masks determined by the images, the engine's layout."""
import json

import numpy as np
import pytest

from hybengine.config import DataConfig
from hybengine.data import DatasetError, validate_folder
from hybengine.data.simulated import (
    PairSpec,
    SceneParams,
    SourceMicroscope,
    TargetMicroscope,
    draw,
    spec_from_dict,
    write_pair,
)

SMALL = dict(size=24, cell_radius=(4.0, 6.0), empty_fraction=0.0)


def test_deterministic_per_seed():
    a = PairSpec(seed=3, scene=SceneParams(**SMALL))
    for domain in ("source", "target"):
        x1, m1 = draw(a, domain, "train", 5)
        x2, m2 = draw(PairSpec(seed=3, scene=SceneParams(**SMALL)), domain, "train", 5)
        assert np.array_equal(x1, x2) and np.array_equal(m1, m2)
        x3, _ = draw(PairSpec(seed=4, scene=SceneParams(**SMALL)), domain, "train", 5)
        assert not np.array_equal(x1, x3)
    assert not np.array_equal(draw(a, "source", "train", 5)[1], draw(a, "source", "test", 5)[1])


@pytest.mark.parametrize("index", range(4))
def test_masks_are_a_function_of_the_images(index):
    """Noise-free microscopes: each class has its own intensity, so thresholds recover the mask exactly."""
    src = SourceMicroscope(cell_brightness=0.0, blur=0.0, noise=0.0)
    tgt = TargetMicroscope(halo=0.0, gradient=0.0, texture=0.0, blur=0.0, noise=0.0)
    spec = PairSpec(scene=SceneParams(**SMALL), source=src, target=tgt)
    x, m = draw(spec, "source", "train", index)
    assert set(np.unique(m)) <= {0, 1, 2} and (m == 2).any() and (m == 1).any()
    recovered = np.digitize(x, [(src.background + src.cytoplasm) / 2, (src.cytoplasm + src.nucleus) / 2])
    assert np.array_equal(recovered, m)
    x, m = draw(spec, "target", "train", index)
    recovered = 2 - np.digitize(x, [(tgt.nucleus + tgt.cytoplasm) / 2, (tgt.cytoplasm + tgt.background) / 2])
    assert np.array_equal(recovered, m)


def test_default_microscopes_keep_the_classes_apart():
    """With the default noise, halos and gradients the class means stay apart by several noise stds."""
    spec = PairSpec(scene=SceneParams(**SMALL))
    for domain in ("source", "target"):
        xs, ms = zip(*(draw(spec, domain, "train", i) for i in range(6)), strict=True)
        x, m = np.stack(xs), np.stack(ms)
        means = [x[m == k].mean() for k in range(3)]
        noise = (spec.source if domain == "source" else spec.target).noise
        assert min(abs(means[i] - means[j]) for i, j in ((0, 1), (1, 2), (0, 2))) > 2 * noise


def test_write_pair_layout_and_reuse(tmp_path):
    spec = PairSpec(root=str(tmp_path / "pair"), source_train=3, source_test=1, target_train=4, target_test=2,
                    scene=SceneParams(**SMALL))
    root = write_pair(spec)
    cfg = DataConfig(root=str(root / "target"), num_classes=3, image_channels=1)
    assert len(validate_folder(root / "target", "train", cfg)) == 4
    assert len(validate_folder(root / "source", "test", cfg)) == 1
    info = json.loads((root / "pair.json").read_text())
    assert info["spec"]["target_train"] == 4
    assert write_pair(spec) == root  # same parameters: reused
    spec.target.noise = 0.2
    with pytest.raises(DatasetError, match="other parameters"):
        write_pair(spec)


def test_spec_from_dict_names_unknown_keys():
    spec = spec_from_dict({"seed": 2, "scene": {"size": 16, "cell_radius": [3, 4]}, "target": {"halo": 0.1}})
    assert spec.seed == 2 and spec.scene.size == 16 and spec.scene.cell_radius == (3, 4) and spec.target.halo == 0.1
    with pytest.raises(DatasetError, match="simulate.target.glow"):
        spec_from_dict({"target": {"glow": 1}})
    with pytest.raises(DatasetError, match="simulate.colour"):
        spec_from_dict({"colour": 1})
