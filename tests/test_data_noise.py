"""The noise estimator (Immerkaer 1996) on images of known noise, and a folder's estimate from images only."""
import numpy as np
import pytest
from PIL import Image

from hybengine.config import DataConfig
from hybengine.data import DatasetError
from hybengine.data.noise import folder_sigma, immerkaer_sigma


@pytest.mark.parametrize("sigma", [0.02, 0.1, 0.3])
def test_known_gaussian_noise_on_flat_and_smooth_images(sigma):
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:128, 0:128] / 127
    for clean in (np.zeros((128, 128)), 0.8 * xx - 0.5 * yy + 0.3 * xx * yy):  # flat; linear + bilinear
        est = immerkaer_sigma(clean + sigma * rng.standard_normal(clean.shape))
        assert est == pytest.approx(sigma, rel=0.05)
    assert immerkaer_sigma(np.stack([clean, clean]) + sigma * rng.standard_normal((2, 128, 128))) == \
        pytest.approx(sigma, rel=0.05)
    with pytest.raises(ValueError, match="too small"):
        immerkaer_sigma(np.zeros((2, 5)))


def test_folder_estimate_reads_images_only_in_normalised_units(tmp_path):
    """dtype normalisation maps 0..255 to -1..1 (x 2/255): 8-bit noise of std 12.75 reads as 0.1."""
    rng = np.random.default_rng(1)
    (tmp_path / "train" / "images").mkdir(parents=True)
    (tmp_path / "train" / "masks").mkdir()
    for i in range(5):
        img = np.clip(np.round(128 + 12.75 * rng.standard_normal((64, 64))), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(tmp_path / "train" / "images" / f"im{i}.png")
        (tmp_path / "train" / "masks" / f"im{i}.png").write_bytes(b"never read")
    est = folder_sigma(tmp_path, "train", DataConfig(normalize="dtype"))
    assert est == pytest.approx(0.1, rel=0.06)
    with pytest.raises(DatasetError, match="no images"):
        folder_sigma(tmp_path, "test", DataConfig())
