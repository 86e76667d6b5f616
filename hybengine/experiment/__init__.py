"""The experiment room: the claim tested end to end, above the fine-tune workflow.

- `pipeline`: pretrain one model per objective (and variant) on the source, choose settings on source
  validation data (`selection`), sweep fine-tunes of every start on the target, analyse;
- `selection`: objective settings chosen per mode on a source validation split, no target image read;
- `stats`: paired contrasts over seeds (label-seed and hierarchical pretraining-seed x label-seed
  bootstraps, signed-rank and sign tests, Holm), the statistics every results page reports.

`python -m hybengine.experiment` (or `hybengine experiment`) is the entry point (`__main__`).
Imports the fine-tune workflow (`hybengine.finetune`), the training loop and the runtime; nothing
below imports it.
"""
