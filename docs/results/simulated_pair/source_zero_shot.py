"""Zero-shot mask Dice of each simulated-pair pretraining at sigma_clean on the SOURCE test split (no target
data): does the mask head work where fine-tuning starts? Run from the repository root after the experiment:
    python docs/results/simulated_pair/source_zero_shot.py   -> source_zero_shot.json beside this file
"""
import json

import torch

from hybengine import ops
from hybengine.config import KernelConfig, config_from_dict
from hybengine.finetune.runner import evaluate
from hybengine.runtime.checkpoint import load_weights
from hybengine.unet import build_unet

torch.set_num_threads(1)
run_ops = ops.resolve_ops(KernelConfig(), torch.device("cpu"))
out = {}
for p in (0, 1):
    for mode in ("hybrid", "supervised", "supervised-noisy", "denoise"):
        w = load_weights(f"runs/simulated_pair/pretrain_{mode}_p{p}")
        cfg = config_from_dict(w["config"])
        net = build_unet(cfg.model, 1, 3, run_ops)
        net.load_state_dict(w["ema"])
        m = evaluate(net, cfg, "test")
        out[f"{mode}_p{p}"] = [round(v, 4) for v in m["dice"]]
        print(mode, p, out[f"{mode}_p{p}"], flush=True)
json.dump(out, open("docs/results/simulated_pair/source_zero_shot.json", "w"), indent=1)
