"""The committed demo data: present, valid, 16-bit, split by frame, and what the script makes."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hybengine.config import DataConfig
from hybengine.data import validate_folder

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "demo_data" / "scratch-assay"
SRC = REPO / "../shared/data/scratch-assay/scratch-assay-labeled-10T-2Ch.tiff"


def frames(stems):
    return {int(re.fullmatch(r"t(\d\d)_r[01]c[0-3]", s).group(1)) for s in stems}


@pytest.mark.parametrize("domain", ["fluorescence", "oblique"])
def test_split_by_frame(domain):
    cfg = DataConfig(root=str(DEMO / domain))
    train, test = validate_folder(cfg.root, "train", cfg), validate_folder(cfg.root, "test", cfg)
    assert len(train) == 56 and len(test) == 24
    assert frames(test) == {2, 5, 8}
    assert frames(train) == {0, 1, 3, 4, 6, 7, 9}
    assert not frames(train) & frames(test)


def test_images_16bit_masks_shared_and_licence():
    licence = (DEMO / "LICENSE").read_text()
    assert "Copyright (c) 2025, Tim Monko" in licence and "Redistribution and use" in licence
    assert "by frame" in (DEMO / "README.md").read_text()
    for split in ("train", "test"):
        for f in sorted((DEMO / "fluorescence" / split / "images").glob("*.png"))[:6]:
            img = Image.open(f)
            assert img.mode in ("I;16", "I") and img.size == (144, 104)
            assert np.array(img).max() > 255
            m_f = np.array(Image.open(DEMO / "fluorescence" / split / "masks" / f.name))
            m_o = np.array(Image.open(DEMO / "oblique" / split / "masks" / f.name))
            assert m_f.dtype == np.uint8 and set(np.unique(m_f)) <= {0, 1, 2}
            np.testing.assert_array_equal(m_f, m_o)


@pytest.mark.skipif(not SRC.is_file(), reason="the scratch-assay source TIFF is not beside the repo")
def test_script_reproduces_committed_bytes(tmp_path):
    import importlib.util
    spec = importlib.util.spec_from_file_location("make_demo_data", REPO / "scripts" / "make_demo_data.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--out", str(tmp_path)]) == 0
    made = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    committed = sorted(p.relative_to(DEMO) for p in DEMO.rglob("*") if p.is_file())
    assert made == committed
    for rel in made:
        assert (tmp_path / rel).read_bytes() == (DEMO / rel).read_bytes(), rel
