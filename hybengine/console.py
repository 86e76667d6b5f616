"""The `hybengine` command: one name for every entry point, plus `validate` and `info`.

    hybengine <command> [options]        (python -m hybengine.console <command> ... works the same)

Each training command hands its arguments, unchanged, to the entry point that `python -m` runs, so
`hybengine train --config X k=v` is `python hybengine/train.py --config X k=v`; multi-GPU pretraining
still goes through the DeepSpeed launcher (`deepspeed hybengine/train.py ...`). `validate` and `info`
live here: they check a data folder and describe this machine, and never train.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import importlib.util
import os
import platform
import sys
from pathlib import Path

# command -> (module whose main(argv) runs it, one line for `hybengine --help`)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("hybengine.train", "pretrain a model (hybrid, supervised or denoise) on a source folder"),
    "finetune": ("hybengine.finetune.__main__", "fine-tune a checkpoint (or scratch) on a few labeled target images"),
    "sweep": ("hybengine.finetune.sweep", "fine-tunes over label budgets x seeds x initialisations, with a table"),
    "experiment": ("hybengine.experiment.pipeline", "pretrain each objective, then sweep them all (one YAML)"),
    "predict": ("hybengine.predict", "masks and overlays for a folder of images"),
    "export": ("hybengine.export", "a run's weights as safetensors, its segmentation as torch.export / ONNX"),
    "sample": ("hybengine.sample", "draw joint (image, mask) samples from a hybrid checkpoint"),
    "demo": ("hybengine.demo", "the bundled demo: pretrain, fine-tune hybrid and scratch, Dice table"),
    "validate": ("hybengine.console", "check a data folder and list every problem (no training)"),
    "info": ("hybengine.console", "versions, devices, which body each op runs, optional packages"),
}
OPTIONAL = ("triton", "deepspeed", "nvidia.dali", "apex", "matplotlib", "tensorboard")


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [__doc__.strip().splitlines()[0], "", "usage: hybengine <command> [options]   "
             "(hybengine <command> --help for its options)", "", "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# validate


def validate_main(argv: list[str] | None = None) -> int:
    """Checks the train and test splits of a data folder as training would; 0 if usable, 1 if not."""
    from .config import ConfigError, load_config
    from .data import DatasetError, validate_folder

    p = argparse.ArgumentParser(prog="hybengine validate", description=(
        "Check a data folder (<root>/<split>/images and masks) the way training reads it: every unreadable "
        "file, missing or extra mask, size mismatch and label outside 0..K-1 is listed, one per line. "
        "Nothing trains. Exit status: 0 usable, 1 problems found, 2 bad config."))
    p.add_argument("args", nargs="*", metavar="ROOT | section.key=value",
                   help="the data folder (default: data.root of the config), and config overrides "
                        "such as data.num_classes=2 or data.mask_format=binary255")
    p.add_argument("--config", help="YAML config whose data section applies (num_classes, mask_format, ...)")
    p.add_argument("--splits", nargs="+", help="splits to check (default: data.train_split and data.test_split)")
    args = p.parse_args(argv)
    roots = [a for a in args.args if "=" not in a]
    overrides = [a for a in args.args if "=" in a]
    if len(roots) > 1:
        p.error(f"one data folder at a time, got {roots}")
    try:
        cfg = load_config(args.config, [*overrides, *(f"data.root={r}" for r in roots)])
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    d = cfg.data
    bad = 0
    for split in args.splits or [d.train_split, d.test_split]:
        try:
            stems = validate_folder(d.root, split, d)
        except DatasetError as e:
            print(e)
            bad += len(e.problems) or 1
        else:
            print(f"{Path(d.root) / split}: {len(stems)} image/mask pairs, usable "
                  f"({d.num_classes} classes, mask_format {d.mask_format}, {d.image_channels} image channel(s))")
    from .data.unlabeled import scan_unlabeled, unlabeled_folders
    if unlabeled_folders(d):  # images without masks: <root>/unlabeled and data.unlabeled (masks never read)
        try:
            n = len(scan_unlabeled(d).files)
        except DatasetError as e:
            print(e)
            bad += len(e.problems) or 1
        else:
            print(f"unlabeled images: {n} in {', '.join(map(str, unlabeled_folders(d)))} (used: "
                  f"data.unlabeled_share={d.unlabeled_share} of each batch)")
    if bad:
        print(f"{bad} problem{'s' if bad != 1 else ''} in {d.root}", file=sys.stderr)
    return 1 if bad else 0


# ---------------------------------------------------------------------------------------------
# info


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "installed" if importlib.util.find_spec(dist) else "not installed"


def _available(module: str) -> str:
    try:
        found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a missing parent package (nvidia.dali without nvidia)
        found = False
    if not found:
        return "not installed"
    dist = {"nvidia.dali": "nvidia-dali-cuda130"}.get(module, module)
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "installed"


def info_report() -> str:
    """Versions, devices and op choices as this process sees them; imports no optional package."""
    import torch

    from . import ops
    from .config import KernelConfig
    from .kernels import info as kernel_info

    lines = [f"hybengine {_version('hybengine')}, python {platform.python_version()}, {platform.platform()}",
             f"torch {torch.__version__}, numpy {_version('numpy')}"]
    cpu = getattr(torch.backends.cpu, "get_cpu_capability", lambda: "?")()
    lines.append(f"cpu: {os.cpu_count()} logical cores, {torch.get_num_threads()} torch threads, "
                 f"vector path {cpu}")
    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            lines.append(f"cuda:{i}: {torch.cuda.get_device_name(i)}")
        devices.append(torch.device("cuda", 0))
    else:
        lines.append("cuda: no GPU visible (CPU runs only; Triton kernels run under TRITON_INTERPRET=1 in tests)")
    lines.append("optional packages: " + ", ".join(f"{m} {_available(m)}" for m in OPTIONAL))
    lines.append("")
    lines.append("fused-op bodies (kernels/bodies.py):")
    lines.append(kernel_info.report())
    lines.append("")
    lines.append("kernels.* = auto resolves to (hybengine/ops.py; body: the fused op's, kernels/bodies.py):")
    for device in devices:
        for c in ops.resolve_ops(KernelConfig(), device).choices:
            lines.append(f"  {device.type:<5} {c.op:<16} {c.path:<10} {c.body:<19} {c.reason}")
    return "\n".join(lines)


def info_main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(prog="hybengine info", description=(
        "Print versions (python, torch, numpy), devices, optional packages (triton, DeepSpeed, DALI, apex, "
        "matplotlib, tensorboard), the body each fused op runs per device and what kernels.*=auto picks. "
        "Runs without a GPU; trains nothing.")).parse_args(argv)
    print(info_report())
    return 0


# ---------------------------------------------------------------------------------------------
# dispatch


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"hybengine: unknown command '{name}'; choose one of: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    if name == "validate":
        return validate_main(rest)
    if name == "info":
        return info_main(rest)
    entry = importlib.import_module(COMMANDS[name][0])
    saved = sys.argv
    sys.argv = [f"hybengine {name}", *rest]  # argparse names the program after argv[0] in usage and help
    try:
        return entry.main(rest)
    finally:
        sys.argv = saved


if __name__ == "__main__":
    sys.exit(main())
