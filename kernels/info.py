"""Which implementation of each fused op runs on each device: `python -m hybengine.kernels.info`.

Prints the native library's state (path, the torch it was built for, the kernel copies compiled
and the one this CPU runs) and the backend table of `bodies.op_backends()`, as this process
sees it (TRITON_INTERPRET and HYBENGINE_CPU_BACKEND included).
"""
from __future__ import annotations

import os

import torch

from . import bodies, native


def report() -> str:
    table = bodies.op_backends()
    lines = [
        f"torch {torch.__version__}, triton {'yes' if bodies.HAS_TRITON else 'no'}"
        f" (TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET', '0')}),"
        f" HYBENGINE_CPU_BACKEND={os.environ.get('HYBENGINE_CPU_BACKEND') or '-'}",
        f"native library: {native.status()}",
        f"{'op':<18}{'cpu':<20}cuda",
    ]
    lines += [f"{op:<18}{per_dev['cpu']:<20}{per_dev['cuda']}" for op, per_dev in table.items()]
    return "\n".join(lines)


if __name__ == "__main__":
    print(report())
