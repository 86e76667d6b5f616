"""Batches bound for a GPU: pinned memory and uint8 masks on the wire (hybengine/data/loader.py)."""
from __future__ import annotations

import dataclasses
import itertools

import torch
from test_data_helpers import threshold_folder

from hybengine.data import TrainLoader
from hybengine.data.folder_dataset import FolderDataset
from hybengine.data.loader import wire_format


def test_wire_format_pins_and_narrows_only_for_cuda(tmp_path):
    cfg = threshold_folder(tmp_path, 2, 16, 16)
    assert wire_format(cfg, torch.device("cpu")) == {} and wire_format(cfg, None) == {}
    assert wire_format(cfg, torch.device("cuda")) == {"pin_memory": True, "mask_dtype": torch.uint8}
    wide = dataclasses.replace(cfg, ignore_index=-100)  # a label that uint8 cannot carry
    assert wire_format(wide, torch.device("cuda"))["mask_dtype"] == torch.int64


def test_uint8_masks_carry_the_same_labels(tmp_path):
    cfg = dataclasses.replace(threshold_folder(tmp_path, 5, 20, 20), crop=16)
    dataset = FolderDataset(cfg, cfg.train_split, train=True, seed=0)
    wide = TrainLoader(dataset, 2, seed=1)
    narrow = TrainLoader(dataset, 2, seed=1, mask_dtype=torch.uint8)
    for (xw, yw), (xn, yn) in itertools.islice(zip(wide, narrow, strict=False), 4):  # both infinite
        assert yw.dtype == torch.int64 and yn.dtype == torch.uint8
        assert torch.equal(xw, xn) and torch.equal(yn.long(), yw)
