"""predict (masks + overlays for a folder) and sample (EDM Heun joint samples) on a tiny model."""
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from hybengine import sample as sample_cli
from hybengine.config import load_config
from hybengine.inference import noise_levels, overlay, predict_folder, sample_pairs
from hybengine.objective import edm_precond
from hybengine.training_loop import run_training

from tiny_run import DEMO_TARGET, tiny_overrides


@pytest.fixture(scope="module")
def hybrid_ckpt(tmp_path_factory):
    out = tmp_path_factory.mktemp("hyb")
    run_training(load_config(None, tiny_overrides(out, steps=2)), console_logging=False)
    return out


def test_predict_writes_masks_and_overlays(hybrid_ckpt, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    src = sorted((DEMO_TARGET / "test" / "images").iterdir())[:2]
    for p in src:
        shutil.copy(p, images / p.name)
    (images / "broken.png").write_bytes(b"not a png")
    problems = predict_folder(str(hybrid_ckpt), images, tmp_path / "out")
    assert len(problems) == 1 and "broken.png" in problems[0]
    for p in src:
        mask = np.asarray(Image.open(tmp_path / "out" / f"{p.stem}_mask.png"))
        over = Image.open(tmp_path / "out" / f"{p.stem}_overlay.png")
        assert mask.shape == np.asarray(Image.open(p)).shape and mask.max() < 3
        assert over.mode == "RGB" and over.size == (mask.shape[1], mask.shape[0])


def test_overlay_tints_foreground_only():
    display = np.full((2, 2, 3), 100, np.uint8)
    out = overlay(display, np.array([[0, 1], [2, 0]]))
    assert (out[0, 0] == 100).all() and (out[1, 1] == 100).all()
    assert not (out[0, 1] == 100).all() and not (out[0, 1] == out[1, 0]).all()


def test_noise_levels_follow_edm():
    t = noise_levels(18)
    assert t[0].item() == pytest.approx(80.0) and t[17].item() == pytest.approx(0.002) and t[18].item() == 0.0
    assert bool((t[1:] < t[:-1]).all())


class PointDenoiser(torch.nn.Module):
    """A 'network' whose denoiser D(x; sigma) is exactly x_star: the probability-flow ODE then ends at x_star."""

    def __init__(self, x_star, num_classes=2):
        super().__init__()
        self.x_star, self.K = x_star, num_classes
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x_in, c_noise):
        sigma = torch.exp(4 * c_noise.double()).float()
        c_skip, c_out, c_in, _, _ = edm_precond(sigma, 0.5)
        x = x_in / c_in.view(-1, 1, 1, 1)
        img = (self.x_star - c_skip.view(-1, 1, 1, 1) * x) / c_out.view(-1, 1, 1, 1)
        logits = torch.stack([-self.x_star[:, 0], self.x_star[:, 0]], dim=1).expand(x.shape[0], -1, -1, -1)
        return torch.cat([img, logits], dim=1)


def test_heun_sampler_reaches_the_point_the_denoiser_names():
    x_star = torch.linspace(-1, 1, 64).view(1, 1, 8, 8)
    images, masks = sample_pairs(PointDenoiser(x_star), 3, 1, 8, 0.5, 0.002, steps=12, sigma_max=10.0,
                                 generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(images, x_star.expand(3, -1, -1, -1), atol=1e-4, rtol=1e-4)
    assert (masks == (x_star[0, 0] > 0).long()).all()  # the mask head, read on the final image


def test_sample_cli(hybrid_ckpt, tmp_path, capsys):
    out = tmp_path / "grid.png"
    assert sample_cli.main(["--checkpoint", str(hybrid_ckpt), "--out", str(out), "--n", "2", "--steps", "2",
                            "--size", "16"]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG"
    assert sample_cli.main(["--checkpoint", str(hybrid_ckpt), "--out", str(out), "--size", "15"]) == 2
    sup = tmp_path / "sup"
    run_training(load_config(None, tiny_overrides(sup, steps=1, **{"objective.mode": "supervised"})),
                 console_logging=False)
    assert sample_cli.main(["--checkpoint", str(sup), "--out", str(out)]) == 2
    assert "supervised" in capsys.readouterr().err


def test_predict_pads_tiny_images_and_reports_failures_per_file(hybrid_ckpt, tmp_path, capsys):
    """Item 15: a 1x1 and a 1x5 image are padded (edge, as the augmentation pads a one-pixel side) and
    predicted; an unreadable file is reported on its own line while every other file is written."""
    from hybengine import predict as predict_cli

    images = tmp_path / "images"
    images.mkdir()
    src = sorted((DEMO_TARGET / "test" / "images").iterdir())[0]
    shutil.copy(src, images / src.name)
    Image.fromarray(np.full((1, 1), 77, np.uint8)).save(images / "dot.png")
    Image.fromarray(np.arange(5, dtype=np.uint8)[None] * 40).save(images / "line.png")
    (images / "broken.png").write_bytes(b"not a png")
    code = predict_cli.main(["--checkpoint", str(hybrid_ckpt), "--images", str(images), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 1 and err.count("skipped") == 1 and "broken.png" in err and "Traceback" not in err
    for stem, shape in (("dot", (1, 1)), ("line", (1, 5)), (src.stem, np.asarray(Image.open(src)).shape)):
        assert np.asarray(Image.open(tmp_path / "out" / f"{stem}_mask.png")).shape == shape


def test_predict_cli_tiles_mirrors_and_saves_probabilities(hybrid_ckpt, tmp_path, capsys):
    """--save-probs writes float32 (K, H, W) probabilities that sum to 1 and whose argmax is the mask;
    --whole predicts in one pass; a tile the U-Net cannot take is refused in one line."""
    import tifffile

    from hybengine import predict as predict_cli

    images = tmp_path / "images"
    images.mkdir()
    src = sorted((DEMO_TARGET / "test" / "images").iterdir())[0]
    shutil.copy(src, images / src.name)
    out = tmp_path / "tiled"
    assert predict_cli.main(["--checkpoint", str(hybrid_ckpt), "--images", str(images), "--out", str(out),
                             "--tta", "--batch-tiles", "3", "--overlap", "0.25", "--save-probs", "both"]) == 0
    probs = np.load(out / f"{src.stem}_probs.npy")
    mask = np.asarray(Image.open(out / f"{src.stem}_mask.png"))
    assert probs.dtype == np.float32 and probs.shape == (3, *mask.shape)
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)
    np.testing.assert_array_equal(probs.argmax(0), mask)
    np.testing.assert_array_equal(tifffile.imread(out / f"{src.stem}_probs.tif"), probs)
    assert predict_cli.main(["--checkpoint", str(hybrid_ckpt), "--images", str(images), "--out",
                             str(tmp_path / "whole"), "--whole"]) == 0
    assert (tmp_path / "whole" / f"{src.stem}_mask.png").is_file()
    assert not (tmp_path / "whole" / f"{src.stem}_probs.npy").exists()
    assert predict_cli.main(["--checkpoint", str(hybrid_ckpt), "--images", str(images), "--out",
                             str(tmp_path / "bad"), "--tile", "31"]) == 2
    err = capsys.readouterr().err
    assert "predict.tile=31 must be a multiple of 2" in err and "Traceback" not in err


def test_evaluate_names_its_prediction_path(hybrid_ckpt, tmp_path):
    """Every Dice a fine-tune or sweep reports comes from predict_probs, and result.json says how."""
    import dataclasses

    from hybengine.finetune.runner import evaluate
    from hybengine.inference import load_model

    for sub in ("images", "masks"):  # three test tiles: fast metrics
        (tmp_path / "test" / sub).mkdir(parents=True)
        for p in sorted((DEMO_TARGET / "test" / sub).iterdir())[:3]:
            shutil.copy(p, tmp_path / "test" / sub / p.name)
    net, cfg = load_model(str(hybrid_ckpt))
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, root=str(tmp_path)))
    tiled = evaluate(net, cfg, "test")
    assert tiled["prediction"] == {"mode": "tiled", "tile": 32, "overlap": 0.25, "batch_tiles": 16, "tta": False,
                                   "precision": "fp32", "blend_sigma": "tile/8"}
    whole = evaluate(net, dataclasses.replace(cfg, predict=dataclasses.replace(cfg.predict, mode="whole")), "test")
    assert whole["prediction"]["mode"] == "whole" and len(whole["per_image"]) == len(tiled["per_image"]) == 3
