"""Which body each fused op runs on each device: `python -m hybengine.kernels.info`.

Prints the native library's state (path, the torch it was built for, the kernel copies compiled
and the one this CPU runs) and the table of `bodies.op_backends()`, under the environment overrides
of this process (`bodies.environment()`: HYBENGINE_CPU_BACKEND, HYBENGINE_NATIVE,
HYBENGINE_NATIVE_LIB; TRITON_INTERPRET is Triton's own).
"""
from __future__ import annotations

import os

import torch

from . import bodies


def report() -> str:
    env = bodies.environment()
    table = bodies.op_backends(env)
    lines = [
        f"torch {torch.__version__}, triton {'yes' if bodies.HAS_TRITON else 'no'}"
        f" (TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET', '0')}),"
        f" HYBENGINE_CPU_BACKEND={env.cpu_body or '-'}",
        f"native library: {bodies.native_state(env)[1]}",
        f"{'op':<18}{'cpu':<20}cuda",
    ]
    lines += [f"{op:<18}{per_dev['cpu']:<20}{per_dev['cuda']}" for op, per_dev in table.items()]
    return "\n".join(lines)


if __name__ == "__main__":
    print(report())
