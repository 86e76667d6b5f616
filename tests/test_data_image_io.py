"""Decoding: 16 bits kept, gray/RGB/luma conversions, TIFF and JPEG, masks, normalisation."""
from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image
from test_data_helpers import write_pair, write_png, write_rgb16_png

from hybengine.config import DataConfig
from hybengine.data import DatasetError, FolderDataset, validate_folder
from hybengine.data.image_io import LUMA, FileProblem, normalize, read_image, read_mask

# values whose low byte varies and that exceed 8 bits: truncation or rescaling would change them
VALUES16 = np.array([[0, 1, 255, 256], [257, 1000, 40000, 65535]], np.uint16)


def test_16bit_png_keeps_all_bits(tmp_path):
    path = write_png(tmp_path / "a.png", VALUES16)
    assert Image.open(path).mode in ("I;16", "I")
    x, dtype_max = read_image(path, channels=1)
    assert dtype_max == 65535 and x.shape == (1, 2, 4)
    np.testing.assert_array_equal(x[0], VALUES16.astype(np.float32))


def test_16bit_png_through_dataset_dtype_normalisation(tmp_path):
    write_pair(tmp_path, "a", VALUES16, np.zeros((2, 4), np.uint8), split="test")
    ds = FolderDataset(DataConfig(root=str(tmp_path), normalize="dtype"), "test", train=False)
    image, mask, name = ds[0]
    expected = VALUES16.astype(np.float32) * np.float32(2 / 65535) - 1
    np.testing.assert_array_equal(image[0].numpy(), expected)
    assert len(np.unique(image.numpy())) == VALUES16.size  # 256 and 257 stay distinct
    assert mask.dtype.is_floating_point is False and name == "a"


def test_16bit_tiff_and_rgb_tiff(tmp_path):
    tifffile.imwrite(tmp_path / "g.tif", VALUES16)
    np.testing.assert_array_equal(read_image(tmp_path / "g.tif", 1)[0][0], VALUES16)
    rgb = np.stack([VALUES16, VALUES16 // 2, VALUES16 // 4], axis=-1)
    tifffile.imwrite(tmp_path / "c.tiff", rgb, photometric="rgb")
    x, m = read_image(tmp_path / "c.tiff", 3)
    assert m == 65535
    np.testing.assert_array_equal(x, rgb.transpose(2, 0, 1).astype(np.float32))


def test_16bit_rgb_png_is_refused_not_truncated(tmp_path):
    path = write_rgb16_png(tmp_path / "rgb16.png", np.stack([VALUES16] * 3, axis=-1))
    with pytest.raises(FileProblem, match="16-bit colour PNG"):
        read_image(path, 3)


def test_rgb_to_luma_and_gray_repeated(tmp_path):
    rgb = np.zeros((3, 5, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 100, 50
    write_png(tmp_path / "c.png", rgb)
    with pytest.raises(FileProblem, match="data.image_channels=3"):  # colour is never grayed silently
        read_image(tmp_path / "c.png", 1)
    write_png(tmp_path / "e.png", np.full((3, 5, 3), 120, np.uint8))  # gray saved as RGB: that gray
    x, m = read_image(tmp_path / "e.png", 1)
    assert x.shape == (1, 3, 5) and m == 255
    np.testing.assert_allclose(x, float(np.dot([120, 120, 120], LUMA)), rtol=1e-6)
    gray = np.arange(15, dtype=np.uint8).reshape(3, 5)
    write_png(tmp_path / "g.png", gray)
    x3, _ = read_image(tmp_path / "g.png", 3)
    assert x3.shape == (3, 3, 5) and all(np.array_equal(x3[c], gray) for c in range(3))
    rgba = np.concatenate([rgb, np.full((3, 5, 1), 7, np.uint8)], axis=-1)
    write_png(tmp_path / "a.png", rgba)
    np.testing.assert_array_equal(read_image(tmp_path / "a.png", 3)[0], rgb.transpose(2, 0, 1))


def test_jpeg_images_are_read(tmp_path):
    image = np.full((16, 16, 3), 120, np.uint8)
    write_pair(tmp_path, "j", image, np.zeros((16, 16), np.uint8), ext=".jpg")
    assert validate_folder(tmp_path, "train", DataConfig(root=str(tmp_path))) == ["j"]
    x, m = read_image(tmp_path / "train" / "images" / "j.jpg", 1)
    assert m == 255 and abs(float(x.mean()) - 120) < 2


def test_binary255_masks_map_to_0_1(tmp_path):
    m = np.array([[0, 255], [255, 0]], np.uint8)
    write_png(tmp_path / "m.png", m)
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png", "binary255"), m // 255)
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png", "index"), m)  # 255 = ignore_index
    Image.fromarray(m > 0).save(tmp_path / "bits.png")  # 1-bit PNG
    np.testing.assert_array_equal(read_mask(tmp_path / "bits.png", "binary255"), m // 255)


def test_16bit_index_mask(tmp_path):
    write_pair(tmp_path, "a", VALUES16[:, :2].astype(np.uint8), np.array([[0, 1], [300, 2]], np.uint16))
    with pytest.raises(DatasetError, match=r"\[300\]"):
        validate_folder(tmp_path, "train", DataConfig(root=str(tmp_path)))


def test_percentile_normalisation():
    x = np.linspace(0, 1000, 10001, dtype=np.float32)[None]
    y = normalize(x, "percentile", 65535)
    assert y.dtype == np.float32
    lo, hi = np.percentile(x, (0.5, 99.5))
    np.testing.assert_allclose(y[0, np.searchsorted(x[0], lo)], -1, atol=1e-3)
    np.testing.assert_allclose(y[0, np.searchsorted(x[0], hi)], 1, atol=1e-3)
    assert y.min() >= -1.5 and y.max() <= 1.5
    spiky = np.linspace(0, 100, 10000, dtype=np.float32).reshape(1, 100, 100)
    spiky[0, 0, 0] = 60000  # one hot pixel does not squash the rest: it is clipped
    z = normalize(spiky, "percentile", 65535)
    assert z[0, 0, 0] == 1.5 and z[0, 50, 50] == pytest.approx(0.0, abs=0.02)
    assert np.array_equal(normalize(np.full((1, 4, 4), 7, np.float32), "percentile", 255), np.zeros((1, 4, 4)))
    np.testing.assert_allclose(normalize(np.array([[0, 255]], np.float32), "dtype", 255), [[-1, 1]])


def test_palette_mask_keeps_indices(tmp_path):
    """A palette ('P') class-index mask is read as its indices, not its colours."""
    m = Image.fromarray(np.array([[0, 1], [2, 1]], np.uint8)).convert("P")
    m.putpalette([0, 0, 0, 200, 10, 10, 10, 200, 10] + [0] * (256 * 3 - 9))
    m.save(tmp_path / "p.png")
    assert Image.open(tmp_path / "p.png").mode == "P"
    np.testing.assert_array_equal(read_mask(tmp_path / "p.png", "index"), [[0, 1], [2, 1]])
