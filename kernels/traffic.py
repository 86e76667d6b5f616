"""Global-memory traffic of Triton launches, counted under the interpreter (TRITON_INTERPRET=1).

`count()` wraps the interpreter's load, store and atomic builders and its grid executor, so every
launch inside the block is recorded with the bytes its programs loaded and stored (masked-off lanes
excluded), split into the "big" tensors of the launch (the arguments with the largest element
count: x, y, dy, dx) and everything else (statistics, partials, parameters: reported apart).

Raw bytes are exact: what the load/store instructions move between the SMs and the memory system.
What reaches DRAM also depends on L2 hits, which the interpreter cannot see, so `Traffic` adds an
explicit model on top, in 32-byte sectors (the DRAM access unit):

    an access to a sector seen before is an L2 hit iff its reuse distance d <= l2_budget, where d
    = bytes touched since its last access, counted in the interpreter's serial order; when the last
    access was in an earlier launch, d is scaled by n_real / n_run (a launch sweeps all samples, so
    at the real batch everything the launches in between touched grows with it);
    a stored sector is written to DRAM once per such "residency" (write-back L2).

`d` counts every touch (not distinct sectors), so it over-estimates the distance: the model errs on
the side of DRAM. l2_budget defaults to 32 MB: an H100/H200's 50 MB L2 less ~16 MB for what the
other programs in flight touch at the same time (528 programs x 32 KB tiles), which serial order
does not show.
"""
from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator

import numpy as np

SECTOR = 32
L2_BUDGET = 32 * 2**20


@dataclasses.dataclass
class Launch:
    name: str
    grid: tuple[int, int, int]
    big: list[tuple[int, int]]  # address ranges [lo, hi) of the big tensors
    load: int = 0  # raw bytes, big tensors
    store: int = 0
    load_small: int = 0  # raw bytes, everything else (incl. atomics)
    store_small: int = 0
    dram_load: int = 0  # modelled DRAM bytes, big tensors
    dram_store: int = 0
    dram_small: int = 0  # modelled DRAM bytes, everything else, loads + stores


class Traffic:
    """Launches recorded inside `count()`, with the L2 model's state (see the module docstring)."""

    def __init__(self, l2_budget: int = L2_BUDGET, batch_scale: float = 1.0):
        self.l2_budget, self.batch_scale = l2_budget, batch_scale
        self.launches: list[Launch] = []
        self._clock = 0  # bytes touched so far (serial order)
        self._last: dict[int, tuple[int, int, bool]] = {}  # sector -> (clock, launch index, dirty)

    def _big_mask(self, addr: np.ndarray) -> np.ndarray:
        m = np.zeros(addr.shape, dtype=bool)
        for lo, hi in self.launches[-1].big:
            m |= (addr >= lo) & (addr < hi)
        return m

    def record(self, addr: np.ndarray, nbytes: int, is_store: bool, atomic: bool = False) -> None:
        if not self.launches or addr.size == 0:
            return
        rec, li = self.launches[-1], len(self.launches) - 1
        addr = addr.astype(np.int64).ravel()
        big = self._big_mask(addr) if not atomic else np.zeros(addr.shape, dtype=bool)
        nb, ns = int(big.sum()) * nbytes, int((~big).sum()) * nbytes
        if is_store:
            rec.store, rec.store_small = rec.store + nb, rec.store_small + ns
        else:
            rec.load, rec.load_small = rec.load + nb, rec.load_small + ns
        for sel, is_big in ((big, True), (~big, False)):
            sectors = np.unique(addr[sel] // SECTOR)
            if sectors.size == 0:
                continue
            dram = 0
            now = self._clock
            last = self._last
            budget, scale = self.l2_budget, self.batch_scale
            for s in sectors.tolist():
                prev = last.get(s)
                if prev is None:
                    hit, dirty = False, False
                else:
                    d = now - prev[0]
                    hit = (d * scale if prev[1] != li else d) <= budget
                    dirty = prev[2] and hit  # a dirty sector that was evicted was written back then
                if is_store:
                    if not dirty:  # a new residency of a written sector: one DRAM write
                        dram += 1
                    last[s] = (now, li, True)
                else:
                    if not hit:
                        dram += 1
                    last[s] = (now, li, dirty)
            self._clock += sectors.size * SECTOR
            db = dram * SECTOR
            if not is_big:
                rec.dram_small += db
            elif is_store:
                rec.dram_store += db
            else:
                rec.dram_load += db

    def totals(self) -> dict[str, int]:
        keys = [f.name for f in dataclasses.fields(Launch) if f.type == "int"]
        return {k: sum(getattr(r, k) for r in self.launches) for k in keys}


@contextlib.contextmanager
def count(l2_budget: int = L2_BUDGET, batch_scale: float = 1.0, big_numel: int | None = None) -> Iterator[Traffic]:
    """Record every interpreted Triton launch in the block. Requires TRITON_INTERPRET=1.

    big_numel: the element count of the big tensors (x's); None: each launch's largest arguments."""
    from triton.runtime import interpreter as interp

    if not getattr(interp, "interpreter_builder", None):
        raise RuntimeError("kernels.traffic.count needs the Triton interpreter (TRITON_INTERPRET=1)")
    t = Traffic(l2_budget, batch_scale)
    builder_cls, grid_cls = interp.InterpreterBuilder, interp.GridExecutor
    saved = {name: getattr(builder_cls, name) for name in
             ("create_masked_load", "create_masked_store", "create_atomic_rmw", "create_atomic_cas")}
    saved_call = grid_cls.__call__

    def esize(ptrs) -> int:
        return ptrs.get_element_ty().primitive_bitwidth // 8

    def masked_load(self, ptrs, mask, other, *a):
        t.record(ptrs.data[mask.data], esize(ptrs), False)
        return saved["create_masked_load"](self, ptrs, mask, other, *a)

    def masked_store(self, ptrs, value, mask, *a):
        t.record(ptrs.data[mask.data], esize(ptrs), True)
        return saved["create_masked_store"](self, ptrs, value, mask, *a)

    def atomic_rmw(self, op, ptr, val, mask, *a):
        t.record(ptr.data[mask.data], esize(ptr), True, atomic=True)
        return saved["create_atomic_rmw"](self, op, ptr, val, mask, *a)

    def atomic_cas(self, ptr, cmp, val, *a):
        t.record(ptr.data.ravel(), esize(ptr), True, atomic=True)
        return saved["create_atomic_cas"](self, ptr, cmp, val, *a)

    def grid_call(self, *args, **kwargs):
        tensors = [a for a in list(args) + list(kwargs.values()) if hasattr(a, "data_ptr") and a.numel() > 0]
        top = big_numel if big_numel is not None else max((a.numel() for a in tensors), default=0)
        big = [(a.data_ptr(), a.data_ptr() + a.numel() * a.element_size()) for a in tensors if a.numel() == top]
        name = getattr(self.fn, "__name__", str(self.fn))
        grid = self.grid if not callable(self.grid) else (0,)
        t.launches.append(Launch(name, tuple(grid) + (1,) * (3 - len(grid)), big))
        return saved_call(self, *args, **kwargs)

    try:
        builder_cls.create_masked_load = masked_load
        builder_cls.create_masked_store = masked_store
        builder_cls.create_atomic_rmw = atomic_rmw
        builder_cls.create_atomic_cas = atomic_cas
        grid_cls.__call__ = grid_call
        yield t
    finally:
        for name, fn in saved.items():
            setattr(builder_cls, name, fn)
        grid_cls.__call__ = saved_call
