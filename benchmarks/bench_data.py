"""Training-batch throughput: DALI pipeline against the torch DataLoader, same files, same settings.

Both loaders serve the same batches (same items, same augmentation parameters: the tests check
they are bit-identical), so this measures the machinery only. Settings: the demo fluorescence
train split (56 tiles, 16-bit PNG, 104x144), crop 64, batch 16, full augmentation. For each N in
--threads: torch with N DataLoader worker processes vs DALI with N CPU threads. The torch path
keeps small datasets decoded in memory; `torch-nocache` decodes every item from its PNG as DALI
does, which is the fair comparison for data that does not fit in memory.

Metric: images/s over --batches batches after --warmup batches, repeated --repeats times on the
same running loader; p50 (p20, p80) across repeats. Rows are appended to
benchmarks/results/data.csv with the device, versions, date and commit.

    python benchmarks/bench_data.py [--threads 1 2] [--batches 30] [--repeats 5]
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime
import os
import platform
import subprocess
import time
from pathlib import Path

import numpy as np
import repo_imports  # noqa: F401  (before hybengine: works without an install)
import torch

from hybengine.config import DataConfig
from hybengine.data import FolderDataset, TrainLoader
from hybengine.data.folder_dataset import scan_folder

REPO = Path(__file__).resolve().parents[1]
FIELDS = ["bench", "provider", "threads", "batch", "crop", "augment", "data", "images_per_s_p50",
          "images_per_s_p20", "images_per_s_p80", "device", "torch", "dali", "date", "commit"]


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    model = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                  if ln.startswith("model name")), platform.processor() or "cpu")
    return f"{model} ({os.cpu_count()} cores)"


def commit() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "hybengine/data", "benchmarks"],
                               cwd=REPO, capture_output=True, text=True).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def measure(loader, batch: int, warmup: int, batches: int, repeats: int) -> list[float]:
    """images/s of `repeats` runs of `batches` batches each, after `warmup` batches."""
    for _ in range(warmup):
        next(loader)
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(batches):
            x, y = next(loader)
        if x.is_cuda:
            torch.cuda.synchronize()  # host sync: the last batch must be complete
        rates.append(batches * batch / (time.perf_counter() - t0))
    loader.close()
    return rates


def make_loader(provider: str, cfg: DataConfig, batch: int, threads: int):
    if provider.startswith("torch"):
        ds = FolderDataset(cfg, cfg.train_split, train=True, seed=0,
                           cache_limit=0 if provider == "torch-nocache" else 512 * 2**20)
        return TrainLoader(ds, batch, seed=0, num_workers=threads)
    from hybengine.data.dali_pipeline import DaliTrainLoader
    device = "mixed" if provider == "dali-mixed" else "cpu"
    return DaliTrainLoader(scan_folder(cfg.root, cfg.train_split, cfg), cfg, batch, 0, device=device,
                           num_threads=threads)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default=str(REPO / "demo_data/scratch-assay/fluorescence"))
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="DataLoader workers = DALI threads")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--crop", type=int, default=64)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--batches", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks/results/data.csv")
    ap.add_argument("--no-write", action="store_true", help="print only")
    args = ap.parse_args(argv)

    torch.set_num_threads(1)  # the loaders' own threads/workers are the variable under test
    cfg = DataConfig(root=args.root, crop=args.crop, augment=True)
    try:
        import nvidia.dali
        dali_version = nvidia.dali.__version__
        providers = ["torch", "torch-nocache", "dali-cpu"] + (["dali-mixed"] if torch.cuda.is_available() else [])
    except ImportError:
        dali_version, providers = "", ["torch", "torch-nocache"]
    common = dict(bench="train_batches", batch=args.batch, crop=args.crop, augment="crop+flip+rot90+jitter",
                  data=Path(args.root).relative_to(REPO).as_posix() if Path(args.root).is_relative_to(REPO)
                  else args.root, device=device_name(), torch=torch.__version__, dali=dali_version,
                  date=datetime.date.today().isoformat(), commit=commit())
    rows = []
    for threads in args.threads:
        for provider in providers:
            rates = measure(make_loader(provider, dataclasses.replace(cfg), args.batch, threads), args.batch,
                            args.warmup, args.batches, args.repeats)
            p20, p50, p80 = np.percentile(rates, [20, 50, 80])
            rows.append({**common, "provider": provider, "threads": threads, "images_per_s_p50": f"{p50:.0f}",
                         "images_per_s_p20": f"{p20:.0f}", "images_per_s_p80": f"{p80:.0f}"})
            print(f"{provider:14s} threads={threads}  {p50:8.0f} images/s  (p20 {p20:.0f}, p80 {p80:.0f})",
                  flush=True)
    if not args.no_write:
        new = not args.out.exists()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=FIELDS)
            if new:
                w.writeheader()
            w.writerows(rows)
        print(f"appended {len(rows)} rows to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
