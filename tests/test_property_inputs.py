"""A corpus that grows by itself: generated overrides, YAML files and small data folders thrown at
`--dry-run` and `hybengine validate`. Each must end cleanly (exit 0), or in one `config error:` line (exit
2) or a listing of problems (exit 1) that names a config key or a file; never a traceback.

Derandomized (the same examples on every run) and bounded, so the suite stays fast; what it found
is fixed and named in tests/test_bad_inputs.py (CONFIG_KINDS, `test_generated_input_finds`)."""
from __future__ import annotations

import contextlib
import dataclasses
import io
import re
import tempfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from test_data_helpers import write_png

from hybengine import train
from hybengine.config import Config, _field_types
from hybengine.console import validate_main

hypothesis = pytest.importorskip("hypothesis")  # the dev extra installs it (setup.py)
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

SETTINGS = dict(derandomize=True, deadline=None, database=None, suppress_health_check=list(HealthCheck))
KEYS = [f"{name}.{f.name}" for name, section in _field_types(Config).items() for f in dataclasses.fields(section)]
NAMES_A_KEY = re.compile(rf"\b({'|'.join(_field_types(Config))})(\.\w+|\b)")  # every config section

# values as a user might type them: numbers of every kind, words, paths, lists, YAML oddities
TRICKY = ["", " ", ".", "./", "/", "..", "~", "nan", "-inf", ".inf", "1e3", "1e-3", "1e400", "-0", "0x10",
          "[]", "[1,2]", "[a,b]", "[[1]]", "{a: 1}", "null", "true", "no", "'quoted'", "3.5", "-1", "2**40",
          "99999999999999999999", "runs/x", "[1,", "a=b", "\x00", "é"]
VALUES = st.one_of(st.sampled_from(TRICKY), st.integers(-2**40, 2**40).map(str),
                   st.floats(allow_nan=True, allow_infinity=True).map(repr), st.text(max_size=8))
OVERRIDE = st.one_of(st.tuples(st.sampled_from(KEYS), VALUES).map("=".join),
                     st.tuples(st.sampled_from([*KEYS, "train", "nope.key", "train.nope", "a.b.c", ""]),
                               VALUES).map("=".join),
                     st.text(max_size=10))


def _run(main, argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def _assert_clean(code: int, err: str, argv) -> None:
    assert "Traceback" not in err, (argv, err)
    if code == 0:
        return
    assert code == 2, (argv, code, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("config error:"), (argv, err)
    named = NAMES_A_KEY.search(lines[0]) or any(repr(a) in lines[0] or (a.strip() and a.split("=")[0] in lines[0])
                                                for a in argv)
    assert named, (argv, err)


@settings(max_examples=250, **SETTINGS)
@given(st.lists(OVERRIDE, min_size=1, max_size=4))
def test_generated_overrides_at_dry_run(overrides):
    argv = [*overrides, "--dry-run"]
    code, _, err = _run(train.main, argv)
    _assert_clean(code, err, argv)


YAML_VALUES = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**20), st.floats(),
                                     st.text(max_size=6), st.sampled_from(TRICKY)),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                       max_size=3), max_leaves=6)
SECTION = st.dictionaries(st.sampled_from([k.split(".")[1] for k in KEYS] + ["nope"]), YAML_VALUES, max_size=3)
YAML_DOC = st.one_of(st.dictionaries(st.sampled_from([*{k.split(".")[0] for k in KEYS}, "extra"]),
                                     st.one_of(SECTION, YAML_VALUES), max_size=3).map(
                         lambda d: yaml.safe_dump(d, allow_unicode=True)),
                     YAML_VALUES.map(lambda v: yaml.safe_dump(v, allow_unicode=True)),
                     st.text(max_size=40))


@settings(max_examples=120, **SETTINGS)
@given(YAML_DOC)
def test_generated_yaml_files_at_dry_run(text):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cfg.yaml"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        argv = ["--config", str(path), "--dry-run"]
        code, _, err = _run(train.main, argv)
    assert "Traceback" not in err, (text, err)
    if code:
        assert code == 2 and len(err.strip().splitlines()) == 1, (text, err)
        assert "cfg.yaml" in err or NAMES_A_KEY.search(err), (text, err)


# a small data folder: per file, an image kind and a mask kind (or a missing / junk file)
IMAGE_KINDS = ["gray8", "gray16", "rgb", "rgb_equal", "rgba", "junk", "empty", "missing", "tiny", "gray_jpg"]
MASK_KINDS = ["ok", "out_of_range", "all255", "binary255", "colour", "wrong_size", "junk", "missing", "16bit"]
FOLDER = st.lists(st.tuples(st.sampled_from(IMAGE_KINDS), st.sampled_from(MASK_KINDS)), min_size=0, max_size=3)


def _write_image(path: Path, kind: str, rng) -> None:
    size = (1, 1) if kind == "tiny" else (16, 16)
    if kind == "missing":
        return
    if kind in ("junk", "empty"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"" if kind == "empty" else b"\x89PNG not really")
        return
    gray = rng.integers(0, 256, size=size, dtype=np.uint8)
    arr = {"gray8": gray, "tiny": gray, "gray16": gray.astype(np.uint16) * 257,
           "rgb": np.stack([gray, 255 - gray, gray // 2], -1), "rgb_equal": np.stack([gray] * 3, -1),
           "rgba": np.stack([gray, gray, 255 - gray, gray], -1), "gray_jpg": gray}[kind]
    if kind == "gray_jpg":
        from PIL import Image

        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(path.with_suffix(".jpg"))
        return
    write_png(path, arr)


def _write_mask(path: Path, kind: str, rng) -> None:
    if kind == "missing":
        return
    if kind == "junk":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"junk")
        return
    m = rng.integers(0, 2, size=(16, 16), dtype=np.uint8)
    arr = {"ok": m, "out_of_range": m * 7, "all255": np.full_like(m, 255), "binary255": m * 255,
           "colour": np.stack([m, 1 - m, m], -1), "wrong_size": m[:8], "16bit": m.astype(np.uint16) * 300}[kind]
    write_png(path, arr)


@settings(max_examples=25, **SETTINGS)
@given(FOLDER, FOLDER, st.sampled_from([[], ["data.mask_format=binary255", "data.num_classes=2"],
                                        ["data.image_channels=3"], ["data.num_classes=2", "data.normalize=dtype"]]))
def test_generated_data_folders_at_validate(train_files, test_files, overrides):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        rng = np.random.default_rng(0)
        for split, files in (("train", train_files), ("test", test_files)):
            (root / split / "images").mkdir(parents=True, exist_ok=True)
            (root / split / "masks").mkdir(parents=True, exist_ok=True)
            for i, (image, mask) in enumerate(files):
                _write_image(root / split / "images" / f"f{i}.png", image, rng)
                _write_mask(root / split / "masks" / f"f{i}.png", mask, rng)
        argv = [str(root), *overrides]
        code, out, err = _run(validate_main, argv)
    assert "Traceback" not in out + err, (argv, train_files, test_files, out, err)
    assert code in (0, 1), (code, out, err)
    if code == 1:  # every problem line names the folder or a file in it
        problems = [line for line in out.splitlines() if line.strip().startswith(("-", "/"))]
        assert problems and all(str(root) in line or "data." in line for line in problems), out
