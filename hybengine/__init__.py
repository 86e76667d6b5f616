"""hybengine: a training engine for hybrid diffusion models (denoise + segment with one U-Net).

Layout, by floor (nothing imports a floor above its own):
- ground: `hybengine.kernels` (the top-level `kernels/` folder, installed under this name: fused
  ops, their references, their per-device bodies), `data/` (folders, validation, augmentation,
  loaders, label budgets, adapters), `runtime/` (distributed set-up, training back-ends,
  checkpoints, EMA, run logs; knows nothing of diffusion), `config.py`, `metrics.py`, `schedule.py`;
- `ops.py`: the op registry, the one place that decides which body each op runs;
- `unet.py` (the network) and `objective.py` (EDM preconditioning and the hybrid objective),
  which call ops only through `ops`;
- `training_loop.py` (the one loop, with `LoopHooks` for tools) and `inference.py` (load, predict,
  sample; no training code);
- `finetune/`: one fine-tune, batched fine-tunes, sweeps, reports, the whole experiment;
- thin entry points: `train.py`, `finetune/__main__.py`, `predict.py`, `sample.py`, `demo.py`,
  with `cli.py` their shared config front. Benchmarks and tests import library modules, never
  an entry point.
"""
