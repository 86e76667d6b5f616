"""The fine-tune workflow: one fine-tune (`runner`), many at once with stacked weights (`batched`),
label-budget sweeps (`sweep`) and their tables and plots (`reports`); the experiment pipeline and
its statistics live a floor up, in `hybengine.experiment`. `python -m hybengine.finetune` is the entry
point (`__main__`).

Imports the training loop, the model, the data layer and the runtime; nothing below imports it.
"""
