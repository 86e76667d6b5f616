"""hybengine: a training engine for hybrid diffusion models (denoise + segment with one U-Net).

Layout, by floor (nothing imports a floor above its own):
- ground: `hybengine.kernels` (the top-level `kernels/` folder, which setup.py installs under this
  name: fused ops, their references, their per-device bodies), `data/` (folders, validation,
  augmentation, loaders, label budgets, adapters), `runtime/` (distributed set-up, training
  back-ends, checkpoints, EMA, run logs; knows nothing of diffusion), `config.py`, `metrics.py`,
  `schedule.py`;
- `ops.py`: the op dispatch, the one module that imports `hybengine.kernels` (besides the
  `hybengine info` report): `resolve_ops(cfg.kernels, device)` turns the config (and the one
  documented place for environment overrides, kernels/bodies.environment) into an immutable `Ops`;
- `unet.py` (the network) and `objective.py` (EDM preconditioning and the hybrid objective), which
  run the `Ops` they are built with (`build_unet(..., ops=)`, `HybridObjective(..., ops=)`) and
  import no kernel;
- `training_loop.py` (the one loop, with `LoopHooks` for tools) and `inference.py` (load, predict,
  sample; no training code);
- `finetune/`: one fine-tune, batched fine-tunes, sweeps and their reports;
- `experiment/`: the claim tested end to end (pretrain each objective, select on source data, sweep,
  analyse) and its statistics;
- thin entry points: `train.py`, `finetune/__main__.py`, `experiment/__main__.py`, `predict.py`, `sample.py`, `demo.py`,
  with `cli.py` their shared config front. Benchmarks and tests import library modules, never
  an entry point.
tests/test_layering.py draws the hybengine -> kernels link from the source and checks it.

Newcomer paths (each checked by a test):
- a new loss term touches the config (its weight, `ObjectiveConfig`) and the objective
  (`HybridObjective.terms`) only: the loops take the per-sample terms whole (tests/test_layering.py);
- a new op, or a new form of one, registers in `ops.FORMS` and is handed to the model through `Ops`;
  no module keeps a table of ops a running model reads (tests/test_ops_resolution.py);
"""
