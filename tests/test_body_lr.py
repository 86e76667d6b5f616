"""optim.body_lr_scale: the output conv (the head) at the scheduled lr, every other weight at a multiple of
it, in the training loop and in the batched fine-tune runner alike (hybengine/runtime/backends.py)."""
import pytest
import torch
from test_sweep import small_target

from hybengine.config import ConfigError, load_config
from hybengine.finetune.batched import run_batched
from hybengine.finetune.runner import prepare_finetune
from hybengine.runtime.backends import HEAD, param_groups
from hybengine.training_loop import run_training
from hybengine.unet import build_unet

from tiny_run import tiny_overrides


def _run_cfg(tmp_path, name: str, scale: float, steps: int):
    """A 2-label fine-tune config from scratch on a small copy of the demo target (raw weights: no EMA)."""
    target = tmp_path / "target"
    if not target.exists():
        small_target(target)
    over = tiny_overrides(tmp_path / name, steps=steps, **{
        "data.root": str(target), "finetune.budget": 2, "train.ckpt_every": 0, "train.ema_halflife_steps": 0,
        "optim.body_lr_scale": scale, "optim.lr": 1e-2, "optim.warmup_steps": 1, "optim.weight_decay": 0.1})
    cfg, _ = prepare_finetune(load_config(None, over))
    return cfg


def _start(cfg) -> dict[str, torch.Tensor]:
    """A fresh net with a non-zero head (a new net's conv_out is zero, which would give the body no gradient)."""
    torch.manual_seed(11)
    state = {k: v.clone() for k, v in build_unet(cfg.model, cfg.data.image_channels,
                                                cfg.data.num_classes).state_dict().items()}
    for k in ("conv_out.weight", "conv_out.bias"):
        state[k] = 0.1 * torch.randn_like(state[k])
    return state


def _is_head(name: str) -> bool:
    return name.startswith(HEAD)


def test_groups_split_head_and_body():
    net = build_unet(load_config(None, []).model, 1, 3)
    named = list(net.named_parameters())
    assert [g["lr_scale"] for g in param_groups(named, 1.0)] == [1.0]
    head, body = param_groups(named, 0.1)
    assert (head["lr_scale"], body["lr_scale"]) == (1.0, 0.1)
    head_names = {n for n, p in named if any(p is q for q in head["params"])}
    assert head_names == {"conv_out.weight", "conv_out.bias"}
    assert len(head["params"]) + len(body["params"]) == len(named)


def test_scale_outside_0_1_is_refused():
    with pytest.raises(ConfigError, match=r"optim.body_lr_scale=1.5: must be in \[0, 1\]"):
        load_config(None, ["optim.body_lr_scale=1.5"])


def test_first_step_moves_the_body_by_the_scale(tmp_path):
    """Adam's first update is lr * m/(sqrt(v)+eps) (+ the decoupled decay lr*wd*w): the same gradient
    from the same start, so the body's displacement scales with its lr (to fp32 rounding of w + dw, atol;
    dw is about lr = 1e-2 here) and the head's is kept."""
    moved = {}
    for scale in (1.0, 0.25):
        cfg = _run_cfg(tmp_path, f"s{scale}", scale, steps=1)
        start = _start(cfg)
        net = run_training(cfg, init_weights=start, console_logging=False).net
        moved[scale] = {k: v.detach() - start[k] for k, v in net.state_dict().items()}
    for k, d in moved[1.0].items():
        expect = d if _is_head(k) else 0.25 * d
        torch.testing.assert_close(moved[0.25][k], expect, rtol=1e-3, atol=1e-6, msg=lambda m, k=k: f"{k}: {m}")
    assert all(moved[1.0][k].abs().max() > 0 for k in ("conv_out.weight", "conv_in.weight"))


def test_zero_freezes_the_body_in_the_loop_and_in_the_batched_runner(tmp_path):
    cfgs = [_run_cfg(tmp_path, f"m{i}", 0.0, steps=3) for i in range(2)]
    start = _start(cfgs[0])
    looped = run_training(cfgs[0], init_weights=start, console_logging=False).net.state_dict()
    batched = [r.net.state_dict() for r in run_batched([(c, start) for c in cfgs])]
    for state in (looped, *batched):
        for k, v in state.items():
            if _is_head(k):
                assert not torch.equal(v.cpu(), start[k]), f"{k}: the head did not train"
            else:
                assert torch.equal(v.cpu(), start[k]), f"{k}: a frozen body weight moved"
