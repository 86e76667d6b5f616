"""The bad-input corpus: bad data, bad config, bad command lines, bad checkpoints and faults, each run
through an entry point's main(argv) in this process. For every kind: the exit code, one
`<tool> error:` line naming the culprit (no traceback), and the existing run folder byte for byte as
it was (docs/failures.md states these guarantees)."""
from __future__ import annotations

import errno
import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_data_helpers import write_pair, write_png

from hybengine import predict, sample, train
from hybengine.config import load_config
from hybengine.finetune import __main__ as finetune_main
from hybengine.training_loop import run_training

from tiny_run import DEMO_TARGET, REPO, run_cli, tiny_overrides

# ---------------------------------------------------------------------------------------------
# Fixtures: one finished tiny run (the folder that must never change) and a good small data folder


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run")
    run_training(load_config(None, tiny_overrides(out, steps=3)), console_logging=False)
    return out


def fingerprint(folder: Path) -> dict[str, str]:
    """relative path -> sha256 of every file under folder (the tiny run's files are small)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def good_data(root: Path, n: int = 3, size: int = 40) -> Path:
    rng = np.random.default_rng(0)
    for i in range(n):
        image = rng.integers(0, 256, size=(size, size), dtype=np.uint8)
        write_pair(root, f"img{i}", image, (image > 127).astype(np.uint8))
    return root


def call(main, argv: list[str], capsys) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().err


def assert_one_line(err: str, what: str, culprit: str) -> None:
    """One `<what> error:` line; its message (with a dataset's listing under it) names the culprit."""
    assert "Traceback" not in err, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith(f"{what} error:")]
    assert len(lines) == 1, err[-3000:]
    message = err[err.index(lines[0]):]
    assert culprit in message, f"{culprit!r} not named in:\n{message}"


def tiny(out: Path, **extra) -> list[str]:
    return tiny_overrides(out, steps=3, **extra)


# ---------------------------------------------------------------------------------------------
# Config and command line: refused before anything runs; the run folder is named as out_dir, untouched

CONFIG_KINDS = {
    "unknown key": (["optim.lrr=1"], "optim.lrr"),
    "not a number": (["optim.lr=fast"], "optim.lr"),
    "not a whole number": (["train.steps=2.5"], "train.steps"),
    "boolean for an int": (["train.steps=true"], "train.steps"),
    "negative seed": (["train.seed=-5"], "train.seed"),
    "seed too large for numpy": (["train.seed=5000000"], "train.seed"),
    "infinite lr": (["optim.lr=.inf"], "optim.lr"),
    "nan lr": (["optim.lr=nan"], "optim.lr"),
    "zero lr": (["optim.lr=0"], "optim.lr"),
    "crop not a multiple": (["data.crop=33"], "data.crop"),
    "crop too small": (["data.crop=4"], "data.crop"),
    "width not divisible by groups": (["model.channels=7"], "model.channels=7"),
    "attention level out of range": (["model.attn_levels=[5]"], "model.attn_levels"),
    "empty out_dir": (["train.out_dir="], "train.out_dir"),
    "dot out_dir": (["train.out_dir=."], "train.out_dir"),
    "one class": (["data.num_classes=1"], "data.num_classes"),
    "ignore_index is a class": (["data.ignore_index=1"], "data.ignore_index"),
    "binary255 with 3 classes": (["data.mask_format=binary255"], "data.num_classes"),
    "choice not allowed": (["train.precision=fp16"], "train.precision"),
    "beta out of range": (["optim.beta1=1.5"], "optim.beta1"),
    "override without =": (["trainsteps"], "trainsteps"),
    "not a section": (["optim=3"], "optim"),
    "deepspeed config not json": (["train.deepspeed_config=zero2.yaml"], "train.deepspeed_config"),
    "list of strings for ints": (["sweep.budgets=[a,b]"], "sweep.budgets"),
}


@pytest.mark.parametrize("kind", CONFIG_KINDS)
def test_config_kinds(kind, run_dir, capsys):
    overrides, culprit = CONFIG_KINDS[kind]
    before = fingerprint(run_dir)
    code, err = call(train.main, [*tiny(run_dir), *overrides], capsys)
    assert code == 2
    assert_one_line(err, "config", culprit)
    assert fingerprint(run_dir) == before


def test_config_file_kinds(run_dir, tmp_path, capsys):
    before = fingerprint(run_dir)
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("optim: {lr: [1,\n")
    a_list = tmp_path / "list.yaml"
    a_list.write_text("- 1\n- 2\n")
    yaml_lr = tmp_path / "lr.yaml"  # PyYAML reads 1e-3 (no dot) as a string: accepted as a number
    yaml_lr.write_text("optim:\n  lr: 1e-3\ntrain:\n  steps: 1e3\n")
    for path, culprit in ((tmp_path / "missing.yaml", "missing.yaml"), (bad_yaml, "bad.yaml"),
                          (a_list, "list.yaml")):
        code, err = call(train.main, ["--config", str(path), *tiny(run_dir)], capsys)
        assert code == 2
        assert_one_line(err, "config", culprit)
    code, out = train.main(["--config", str(yaml_lr), "--dry-run"]), capsys.readouterr().out
    assert code == 0 and "lr: 0.001" in out and "steps: 1000" in out
    assert fingerprint(run_dir) == before


# ---------------------------------------------------------------------------------------------
# Run folders and checkpoints: refused with one line, nothing overwritten, nothing unpickled


def test_fresh_run_into_an_existing_run_is_refused(run_dir, capsys):  # item 2
    before = fingerprint(run_dir)
    code, err = call(train.main, tiny(run_dir), capsys)
    assert code == 2
    assert_one_line(err, "train", "--resume")
    assert "delet" in err and fingerprint(run_dir) == before


def test_resume_with_a_changed_config_keeps_the_saved_one(run_dir, capsys):  # items 1 and 16
    before = fingerprint(run_dir)
    saved = (run_dir / "config.yaml").read_text()
    # overrides before and after --resume (argparse used to reject those after it)
    code, err = call(train.main, ["optim.lr=0.5", "--resume", str(run_dir), *tiny(run_dir)], capsys)
    assert code == 2
    assert_one_line(err, "train", "optim.lr")
    assert (run_dir / "config.yaml").read_text() == saved  # the refusal's advice still works
    assert fingerprint(run_dir) == before


def test_resume_with_a_changed_architecture_is_one_line(run_dir, capsys):  # item 4
    before = fingerprint(run_dir)
    code, err = call(train.main, ["--resume", str(run_dir), *tiny(run_dir, **{"model.channels": 16})], capsys)
    assert code == 2
    assert_one_line(err, "train", "model.channels: 8 -> 16")
    assert "size mismatch" not in err and fingerprint(run_dir) == before


def test_out_dir_that_is_a_file(tmp_path, capsys):
    f = tmp_path / "notes.txt"
    f.write_text("mine")
    code, err = call(train.main, tiny(f), capsys)
    assert code == 2
    assert_one_line(err, "train", "notes.txt")
    assert f.read_text() == "mine"


def test_resume_from_nowhere(tmp_path, capsys):
    code, err = call(train.main, ["--resume", str(tmp_path / "nowhere"), *tiny(tmp_path / "new")], capsys)
    assert code == 2
    assert_one_line(err, "train", "nowhere")


def _copy_run(run_dir: Path, dst: Path) -> Path:
    shutil.copytree(run_dir, dst)
    return dst


class _RunsCode:
    """Unpickling this creates `marker`: what a crafted checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('ran')",)


def _snapshot(run: Path) -> Path:
    return run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()


@pytest.mark.parametrize("target", ["rank0_state.pt", "plain_state.pt", "weights.pt", "extra.pt"])
def test_crafted_checkpoint_file_is_refused_not_run(target, run_dir, tmp_path, capsys):  # item 5
    run = _copy_run(run_dir, tmp_path / "run")
    marker = tmp_path / "ran"
    torch.save({"step": 3, "payload": _RunsCode(marker)}, _snapshot(run) / target)
    before = fingerprint(run)
    code, err = call(train.main, ["--resume", str(run), *tiny(run)], capsys)
    assert code == 2
    assert_one_line(err, "train", target)
    assert "refused" in err and not marker.exists()
    assert fingerprint(run) == before


def test_crafted_weights_refused_by_predict_and_sample(run_dir, tmp_path, capsys):  # item 5
    run = _copy_run(run_dir, tmp_path / "run")
    marker = tmp_path / "ran"
    torch.save({"model": _RunsCode(marker)}, _snapshot(run) / "weights.pt")
    images = good_data(tmp_path / "data") / "train" / "images"
    code, err = call(predict.main, ["--checkpoint", str(run), "--images", str(images), "--out",
                                    str(tmp_path / "pred")], capsys)
    assert code == 2
    assert_one_line(err, "predict", "weights.pt")
    code, err = call(sample.main, ["--checkpoint", str(run), "--out", str(tmp_path / "s.png")], capsys)
    assert code == 2
    assert_one_line(err, "sample", "weights.pt")
    assert not marker.exists()


def test_another_projects_weights_say_what_they_lack(run_dir, tmp_path, capsys):  # item 13
    run = _copy_run(run_dir, tmp_path / "run")
    torch.save({"state_dict": {"w": torch.zeros(2)}}, _snapshot(run) / "weights.pt")
    images = good_data(tmp_path / "data") / "train" / "images"
    code, err = call(predict.main, ["--checkpoint", str(run), "--images", str(images), "--out",
                                    str(tmp_path / "pred")], capsys)
    assert code == 2
    assert_one_line(err, "predict", "lacks 'model', 'ema', 'config', 'step'")
    code, err = call(train.main, ["--resume", str(run), *tiny(run)], capsys)
    assert code == 2
    assert_one_line(err, "train", "lacks")
    over = tiny(tmp_path / "ft", **{"data.root": str(DEMO_TARGET), "finetune.checkpoint": str(run)})
    code, err = call(finetune_main.main, over, capsys)
    assert code == 2
    assert_one_line(err, "finetune", "lacks")


def test_truncated_weights(run_dir, tmp_path, capsys):
    run = _copy_run(run_dir, tmp_path / "run")
    w = _snapshot(run) / "weights.pt"
    w.write_bytes(w.read_bytes()[:100])
    code, err = call(sample.main, ["--checkpoint", str(run), "--out", str(tmp_path / "s.png")], capsys)
    assert code == 2
    assert_one_line(err, "sample", "weights.pt")


def test_checkpoint_and_predict_folder_kinds(run_dir, tmp_path, capsys):
    code, err = call(predict.main, ["--checkpoint", str(tmp_path / "none"), "--images", str(tmp_path),
                                    "--out", str(tmp_path / "p")], capsys)
    assert code == 2
    assert_one_line(err, "predict", "none")
    code, err = call(predict.main, ["--checkpoint", str(run_dir), "--images", str(tmp_path / "no_images"),
                                    "--out", str(tmp_path / "p")], capsys)
    assert code == 2
    assert_one_line(err, "predict", "no_images")
    code, err = call(sample.main, ["--checkpoint", str(tmp_path / "none"), "--out", str(tmp_path / "s.png")],
                     capsys)
    assert code == 2
    assert_one_line(err, "sample", "none")


def test_finetune_kinds(run_dir, tmp_path, capsys):
    before = fingerprint(run_dir)
    base = {"data.root": str(DEMO_TARGET), "finetune.checkpoint": str(run_dir)}
    kinds = [({"finetune.checkpoint": str(tmp_path / "nowhere")}, "nowhere"),
             ({"data.num_classes": 4}, "data.num_classes"),
             ({"finetune.budget": 99}, "budget 99"),
             ({"finetune.budget": -1}, "finetune.budget"),
             ({"finetune.budget": 0, "finetune.checkpoint": ""}, "finetune.checkpoint")]  # zero-shot needs a start
    for i, (extra, culprit) in enumerate(kinds):
        code, err = call(finetune_main.main, tiny(tmp_path / f"ft{i}", **{**base, **extra}), capsys)
        assert code == 2, err[-2000:]
        assert_one_line(err, "config" if culprit == "finetune.budget" else "finetune", culprit)
    assert fingerprint(run_dir) == before


def test_debug_keeps_the_traceback(run_dir, capsys):  # item 10
    with pytest.raises(ValueError, match="already holds a run"):
        train.main(["--debug", *tiny(run_dir)])
    capsys.readouterr()


# ---------------------------------------------------------------------------------------------
# Bad data: one `train error:` naming the file; the fresh run folder gets no run in it

def _data_kinds(root: Path) -> dict[str, tuple[Path, list[str], str]]:
    """kind -> (data root, extra overrides, culprit named in the message), each root a good folder
    with one defect."""
    kinds: dict[str, tuple[Path, list[str], str]] = {}

    def mask_array(path: Path) -> np.ndarray:
        return np.asarray(Image.open(path))

    def rewrite_masks(split: Path, fn) -> Path:
        for p in sorted((split / "masks").iterdir()):
            write_png(p, fn(mask_array(p)))
        return split / "masks"

    def unlink(path: Path) -> Path:
        path.unlink()
        return path

    def write_bytes(path: Path, data: bytes) -> Path:
        path.write_bytes(data)
        return path

    def symlink(path: Path, to: str) -> Path:
        os.symlink(to, path)
        return path

    defects = {  # kind: (defect(split folder) -> what the message must name, extra overrides)
        "missing mask": (lambda s: unlink(s / "masks" / "img0.png") and s / "images" / "img0.png", []),
        "mask without image": (lambda s: unlink(s / "images" / "img1.png") and s / "masks" / "img1.png", []),
        "size mismatch": (lambda s: write_png(s / "masks" / "img0.png", np.zeros((20, 40), np.uint8)), []),
        "label out of range": (lambda s: write_png(s / "masks" / "img0.png", np.full((40, 40), 7, np.uint8)), []),
        "corrupt image": (lambda s: write_bytes(s / "images" / "img0.png", b"not a png"), []),
        "truncated image": (lambda s: write_bytes(s / "images" / "img0.png",
                                                  (s / "images" / "img0.png").read_bytes()[:60]), []),
        "empty image file": (lambda s: write_bytes(s / "images" / "img2.png", b""), []),
        "text file among images": (lambda s: write_bytes(s / "images" / "notes.txt", b"x"), []),
        "symlink loop among images": (lambda s: symlink(s / "images" / "loop.png", "loop.png"), []),  # item 8
        "broken symlink among masks": (lambda s: symlink(s / "masks" / "img9.png", "gone.png"), []),
        "colour mask": (lambda s: write_png(s / "masks" / "img0.png",
                                            np.stack([np.zeros((40, 40), np.uint8), np.ones((40, 40), np.uint8),
                                                      np.zeros((40, 40), np.uint8)], -1)), []),
        "duplicate stem": (lambda s: write_png(s / "images" / "img0.tif", np.zeros((40, 40), np.uint8)), []),
        "empty images folder": (lambda s: [unlink(p) for p in (s / "images").iterdir()] and s / "images", []),
        "0/255 masks read as indices": (lambda s: rewrite_masks(s, lambda m: (m * 255).astype(np.uint8))
                                        and "mask_format=binary255", []),  # item 6
        "all-ignore masks": (lambda s: rewrite_masks(s, lambda m: np.full_like(m, 255))
                             and "mask_format=binary255", []),  # item 6
        "binary255 with other values": (lambda s: write_png(s / "masks" / "img0.png",
                                                            np.full((40, 40), 128, np.uint8)),
                                        ["data.mask_format=binary255"]),
        "unknown labeled_subset stem": (lambda s: "nope", ["data.labeled_subset=[img0,nope]"]),
    }
    for kind, (defect, extra) in defects.items():
        r = good_data(root / kind.replace(" ", "_").replace("/", "_"))
        kinds[kind] = (r, extra, str(defect(r / "train")))
    (root / "no_split").mkdir()
    kinds["missing split folder"] = (root / "no_split", [], str(root / "no_split" / "train"))
    kinds["data.root missing"] = (root / "absent", [], str(root / "absent"))
    return kinds


def test_data_kinds(tmp_path, capsys):
    kinds = _data_kinds(tmp_path / "data")
    assert len(kinds) >= 19
    for kind, (root, extra, culprit) in kinds.items():
        out = tmp_path / "runs" / kind.replace(" ", "_").replace("/", "_")
        over = tiny(out, **{"data.root": str(root), "data.num_classes": 2, "data.normalize": "dtype"})
        code, err = call(train.main, [*over, *extra], capsys)
        assert code == 2, f"{kind}: exit {code}\n{err[-2000:]}"
        assert "Traceback" not in err, f"{kind}:\n{err[-3000:]}"
        assert_one_line(err, "train", culprit)
        # nothing of a run left behind: the same command runs once the data is fixed
        assert not (out / "config.yaml").exists() and not (out / "checkpoints").exists(), kind


# ---------------------------------------------------------------------------------------------
# Faults


def test_disk_full_while_writing_a_snapshot(tmp_path, capsys, monkeypatch):  # item 14
    """The kernel's own ENOSPC (/dev/full) for the second snapshot's weights: one line naming the
    snapshot and the free space; the first snapshot stays whole and is what --resume continues."""
    import hybengine.runtime.atomic as atomic

    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full on this system")
    real_open, calls = open, []

    def open_full(path, mode="r", *a, **kw):  # the weights.pt temp file of the step-6 snapshot
        if "b" in mode and "w" in mode and "step_00000006.tmp" in str(path) and "weights.pt" in str(path):
            calls.append(path)
            return real_open("/dev/full", mode, *a, **kw)
        return real_open(path, mode, *a, **kw)

    monkeypatch.setattr(atomic, "open", open_full, raising=False)
    out = tmp_path / "run"
    code, err = call(train.main, tiny_overrides(out, steps=6), capsys)
    assert calls and code == 2
    assert_one_line(err, "train", "no space left on device")
    assert "step_00000006.tmp" in err and "MiB free" in err and "step_00000003 is intact" in err
    root = out / "checkpoints"
    assert (root / "latest").read_text().strip() == "step_00000003"
    assert not (root / "step_00000006.tmp").exists() and not (root / "step_00000006").exists()
    monkeypatch.undo()
    code, err = call(train.main, ["--resume", str(out), *tiny_overrides(out, steps=6)], capsys)
    assert code == 0, err[-3000:]


def test_engine_errors_list_is_small():
    """Entry points turn only the engine's error families into one line; a bug keeps its traceback."""
    from hybengine.cli import guarded

    assert guarded("x", False, lambda: (_ for _ in ()).throw(OSError(errno.ENOSPC, "full"))) == 2
    with pytest.raises(KeyError):
        guarded("x", False, lambda: {}["bug"])


def test_overrides_in_any_order_around_the_options():  # item 16
    from hybengine.cli import parse_args

    args = parse_args(None, ["optim.lr=0.1", "--resume", "runs/x", "train.steps=5", "--dry-run", "data.crop=32"])
    assert args.resume == "runs/x" and args.dry_run
    assert args.overrides == ["optim.lr=0.1", "train.steps=5", "data.crop=32"]


def test_numbers_as_python_writes_them(run_dir, capsys):  # item 11
    code = train.main(["optim.lr=1e-3", "train.steps=1e3", "optim.beta2=.999", "train.seed=2.0", "--dry-run"])
    out = capsys.readouterr().out
    assert code == 0
    assert "lr: 0.001" in out and "steps: 1000" in out and "beta2: 0.999" in out and "seed: 2\n" in out


def test_finetune_says_which_model_settings_the_checkpoint_replaces(run_dir, caplog):  # item 9
    from hybengine.finetune.runner import pretrained_init

    cfg = load_config(None, tiny_overrides(run_dir / "unused", **{"data.root": str(DEMO_TARGET),
                                                                  "finetune.checkpoint": str(run_dir),
                                                                  "model.channels": 16}))
    with caplog.at_level("WARNING", logger="hybengine.finetune"):
        ft_cfg, _ = pretrained_init(cfg)
    assert ft_cfg.model.channels == 8  # the checkpoint's architecture is what loads
    assert "model.channels=16 (checkpoint: 8)" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="hybengine.finetune"):  # matching values: nothing to say
        pretrained_init(load_config(None, tiny_overrides(run_dir / "unused", **{
            "data.root": str(DEMO_TARGET), "finetune.checkpoint": str(run_dir)})))
    assert "replaced" not in caplog.text


def test_real_process_exit_code_and_one_line(run_dir):
    """The same through a real `python hybengine/train.py` process (sys.exit of main's code)."""
    before = fingerprint(run_dir)
    r = run_cli(["hybengine/train.py", *tiny(run_dir)])
    assert r.returncode == 2
    assert_one_line(r.stderr, "train", "--resume")
    assert fingerprint(run_dir) == before


# ---------------------------------------------------------------------------------------------
# Round two (issue 26): paths resolved, resume from the run folder, early split checks, colour, full
# disks before the first snapshot, non-torch weights, Ctrl-C


SHARED_FOLDERS = {"./": "./", "/": "/", "..": "..", "the home folder": str(Path.home()),
                  "above the repo": str(REPO.parent), "the repo via a dotted path": f"{REPO}/hybengine/.."}


@pytest.mark.parametrize("where", SHARED_FOLDERS)
def test_out_dir_that_resolves_to_a_shared_folder_is_refused(where, capsys):  # item 1
    """Refused at --dry-run already (nothing is ever written there): the path is resolved first."""
    folder = SHARED_FOLDERS[where]
    code, err = call(train.main, [f"train.out_dir={folder}", "--dry-run"], capsys)
    assert code == 2
    assert_one_line(err, "config", "train.out_dir")
    code, err = call(finetune_main.main, [f"sweep.out_dir={folder}", "sweep.budgets=[1]", "--dry-run"], capsys)
    assert code == 2
    assert_one_line(err, "config", "sweep.out_dir")


def test_run_folder_rule_holds_for_library_callers(tmp_path):  # item 1: run_training's own check
    from hybengine.runtime.run_folder import RunFolderError, check_run_folder

    for folder in ("/", str(Path.cwd()), str(Path.cwd()) + "/sub/.."):
        with pytest.raises(RunFolderError, match="folder of its own"):
            check_run_folder(Path(folder), None, lambda saved: ([], []))
    assert check_run_folder(tmp_path / "new", None, lambda saved: ([], [])) == (None, [])


def test_resume_from_a_folder_that_does_not_exist(tmp_path, capsys):  # item 2
    for main, what in ((finetune_main.main, "finetune"), (train.main, "train")):
        code, err = call(main, ["--resume", str(tmp_path / "does" / "not" / "exist")], capsys)
        assert code == 2
        assert_one_line(err, what, "does/not/exist")
    assert not (tmp_path / "does").exists()


def test_finetune_without_a_test_split_is_refused_before_training(tmp_path, capsys):  # item 3
    data = good_data(tmp_path / "data")  # a train split only
    out = tmp_path / "ft"
    over = tiny(out, **{"data.root": str(data), "data.num_classes": 2, "data.normalize": "dtype"})
    code, err = call(finetune_main.main, over, capsys)
    assert code == 2
    assert_one_line(err, "finetune", str(data / "test"))
    assert not (out / "config.yaml").exists() and not (out / "checkpoints").exists()  # nothing trained


def _rgb_data(root: Path, equal_channels: bool) -> Path:
    good_data(root)
    rng = np.random.default_rng(1)
    gray = rng.integers(0, 256, size=(40, 40), dtype=np.uint8)
    rgb = np.stack([gray, gray, gray] if equal_channels else [gray, 255 - gray, gray // 2], -1)
    write_png(root / "train" / "images" / "img1.png", rgb)
    return root / "train" / "images" / "img1.png"


def test_colour_images_with_one_image_channel_are_named(tmp_path, capsys):  # item 4
    from hybengine.console import validate_main

    rgb = _rgb_data(tmp_path / "rgb", equal_channels=False)
    over = ["data.num_classes=2", "data.normalize=dtype"]
    assert validate_main([str(rgb.parents[2]), *over, "--splits", "train"]) == 1
    out = capsys.readouterr().out
    assert "img1.png" in out and "data.image_channels=3" in out
    code, err = call(train.main, tiny(tmp_path / "run", **{"data.root": str(rgb.parents[2]),
                                                          "data.num_classes": 2, "data.normalize": "dtype"}), capsys)
    assert code == 2
    assert_one_line(err, "train", "img1.png")
    assert "data.image_channels=3" in err and not (tmp_path / "run" / "config.yaml").exists()
    # gray saved as RGB (three equal channels) is gray: accepted as it was
    gray_rgb = _rgb_data(tmp_path / "gray_rgb", equal_channels=True)
    assert validate_main([str(gray_rgb.parents[2]), *over, "--splits", "train"]) == 0
    capsys.readouterr()


def test_predict_names_a_colour_image_for_a_gray_model(run_dir, tmp_path, capsys):  # item 4
    rgb = _rgb_data(tmp_path / "rgb", equal_channels=False)
    code, err = call(predict.main, ["--checkpoint", str(run_dir), "--images", str(rgb.parent), "--out",
                                    str(tmp_path / "pred")], capsys)
    assert code == 1 and "Traceback" not in err
    assert "img1.png" in err and "data.image_channels=3" in err


def _disk_full_at(monkeypatch, module, fragment: str, name: str) -> list:
    """Writes of files whose path holds `fragment` and `name` go to /dev/full (the kernel's ENOSPC)."""
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full on this system")
    real_open, calls = open, []

    def open_full(path, mode="r", *a, **kw):
        if ("w" in mode or "a" in mode) and fragment in str(path) and name in str(path):
            calls.append(path)
            return real_open("/dev/full", mode, *a, **kw)
        return real_open(path, mode, *a, **kw)

    monkeypatch.setattr(module, "open", open_full, raising=False)
    return calls


def test_disk_full_before_the_first_snapshot_is_no_circle(tmp_path, capsys, monkeypatch):  # item 5
    import hybengine.runtime.atomic as atomic

    calls = _disk_full_at(monkeypatch, atomic, "step_00000003.tmp", "weights.pt")
    out = tmp_path / "run"
    code, err = call(train.main, tiny_overrides(out, steps=6), capsys)
    assert calls and code == 2
    assert_one_line(err, "train", "no space left on device")
    assert "no earlier snapshot exists" in err and "run the same command again" in err
    monkeypatch.undo()
    code, err = call(train.main, tiny_overrides(out, steps=6), capsys)  # the same command: starts over
    assert code == 0, err[-3000:]
    assert json_steps(out) == [2, 4, 6]
    # and --resume of a run that never saved a snapshot starts it over too
    shutil.rmtree(out / "checkpoints")
    code, err = call(train.main, ["--resume", str(out)], capsys)
    assert code == 0, err[-3000:]
    assert json_steps(out) == [2, 4, 6] and "starting the run over from step 0" in (out / "run.log").read_text()


def test_disk_full_while_logging_metrics_names_the_file(tmp_path, capsys, monkeypatch):  # item 5
    import hybengine.runtime.run_log as run_log

    calls = _disk_full_at(monkeypatch, run_log, "", "metrics.jsonl")
    out = tmp_path / "run"
    code, err = call(train.main, tiny_overrides(out, steps=6), capsys)
    assert calls and code == 2
    assert_one_line(err, "train", str(out / "metrics.jsonl"))


def json_steps(out: Path) -> list[int]:
    import json

    return [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("content", [b"", b"hello, not a checkpoint\n", b"PK\x03\x04 broken zip"],
                         ids=["zero bytes", "text", "broken zip"])
def test_weights_that_are_not_a_torch_file(content, run_dir, tmp_path, capsys):  # item 6
    run = _copy_run(run_dir, tmp_path / "run")
    (_snapshot(run) / "weights.pt").write_bytes(content)
    images = good_data(tmp_path / "data") / "train" / "images"
    code, err = call(predict.main, ["--checkpoint", str(run), "--images", str(images), "--out",
                                    str(tmp_path / "pred")], capsys)
    assert code == 2
    assert_one_line(err, "predict", "weights.pt")
    over = tiny(tmp_path / "ft", **{"data.root": str(DEMO_TARGET), "finetune.checkpoint": str(run)})
    code, err = call(finetune_main.main, over, capsys)
    assert code == 2
    assert_one_line(err, "finetune", "weights.pt")


def test_resume_with_the_run_folder_alone(run_dir, tmp_path, capsys):  # item 8
    """--resume RUN reads the run's saved config: no --config or overrides to repeat; resume-free
    overrides (train.steps to extend) are applied and written to run.log; others are refused."""
    run = _copy_run(run_dir, tmp_path / "run")
    code, err = call(train.main, ["--resume", str(run)], capsys)  # finished: nothing left to do
    assert code == 0, err[-3000:]
    before = fingerprint(run / "checkpoints")
    code, err = call(train.main, ["--resume", str(run), "optim.lr=0.5"], capsys)
    assert code == 2
    assert_one_line(err, "train", "optim.lr")
    assert fingerprint(run / "checkpoints") == before
    code, err = call(train.main, ["--resume", str(run), "train.steps=5"], capsys)
    assert code == 0, err[-3000:]
    assert torch.load(_snapshot(run) / "weights.pt", weights_only=True)["step"] == 5
    assert "train.steps: 3 -> 5" in (run / "run.log").read_text()
    assert json_steps(run) == [2, 3, 4, 5]
    code = train.main(["--resume", str(run), "--dry-run"])
    assert code == 0 and "steps: 5" in capsys.readouterr().out


# What the property-based test (tests/test_property_inputs.py) found, kept by name: each was a traceback
# or a message broken over several lines
GENERATED_FINDS = {
    "list value cut short": (["sweep.budgets=[1,"], "sweep.budgets"),
    "NUL byte in a value": (["optim.lr=\x00"], "optim.lr"),
    "control character in a value": (["train.steps=\x1b[31m"], "train.steps"),
    "record separator as an override": (["\x1e"], "'\\x1e'"),
    "empty override": ([""], "override ''"),
    "line break in a key": (["train.ste\nps=3"], "train.ste\\nps"),
}


@pytest.mark.parametrize("kind", GENERATED_FINDS)
def test_generated_input_finds(kind, capsys):
    overrides, culprit = GENERATED_FINDS[kind]
    code, err = call(train.main, [*overrides, "--dry-run"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert_one_line(err, "config", culprit)


def test_generated_yaml_finds(tmp_path, capsys):
    quoted = tmp_path / "quoted.yaml"
    quoted.write_text("optim: {lr: '1}\n")  # a quoted scalar left open: PyYAML's message spans lines
    code, err = call(train.main, ["--config", str(quoted), "--dry-run"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert_one_line(err, "config", "quoted.yaml")
