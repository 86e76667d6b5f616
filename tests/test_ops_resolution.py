"""Ops are resolved once and handed down: two models with different op choices train side by side in
one process, each on its own ops, neither changing the other; and no module of hybengine/ or kernels/
writes a module-level table after import (the kind of state that let one run switch another's ops)."""
import ast
import dataclasses
import functools
from collections import Counter
from pathlib import Path

import pytest
import torch

from hybengine import ops
from hybengine.config import KernelConfig, ModelConfig, ObjectiveConfig
from hybengine.kernels import group_norm_silu, hybrid_loss, upsample_conv_subpixel
from hybengine.kernels.bodies import Environment
from hybengine.objective import HybridObjective
from hybengine.unet import GroupNormSiLU, UpsampleConv, build_unet

REPO = Path(__file__).resolve().parents[1]
MODEL = ModelConfig(channels=8, channel_mult=[1, 2], num_res_blocks=1, groups=4, attn_levels=[])
REFERENCE = KernelConfig(group_norm_silu="reference", hybrid_loss="reference", upsample_conv="reference")
FAST = KernelConfig(group_norm_silu="fused", hybrid_loss="fused", upsample_conv="subpixel")
MATH = Environment(cpu_body="math")  # the fused ops' plain-torch body: fast on CPU, no interpreter


def counted(resolved: ops.Ops, calls: Counter) -> ops.Ops:
    """`resolved` with every op call counted in `calls` (what ran, per model)."""
    def wrap(name, fn):
        return lambda *a, **k: (calls.update([name]), fn(*a, **k))[1]
    return dataclasses.replace(resolved, **{n: wrap(n, getattr(resolved, n)) for n in ops.FORMS})


class Run:
    """One model, its objective and AdamW, built with `resolved`; `step()` trains one step."""

    def __init__(self, resolved: ops.Ops):
        self.calls = Counter()
        resolved = counted(resolved, self.calls)
        torch.manual_seed(0)
        self.net = build_unet(MODEL, 1, 3, ops=resolved)
        for p in self.net.parameters():  # zero-initialised output layers would hide the ops
            torch.nn.init.normal_(p, std=0.2)
        self.objective = HybridObjective(ObjectiveConfig(clean_share=0.0), 255, ops=resolved)
        self.opt = torch.optim.AdamW(self.net.parameters(), lr=1e-2)
        self.gen = torch.Generator().manual_seed(1)
        data = torch.Generator().manual_seed(2)
        self.x = -0.3 + 0.5 * torch.randn(2, 1, 8, 8, generator=data)
        self.y = torch.randint(0, 3, (2, 8, 8), generator=data)
        self.losses = []

    def step(self) -> None:
        den, mask = self.objective(self.net, self.x, self.y, self.gen)
        loss = (den + mask).mean()
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.losses.append(loss.item())

    def state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.net.state_dict().items()}


def alone(kernels: KernelConfig, steps: int) -> Run:
    run = Run(ops.resolve_ops(kernels, "cpu", MATH))
    for _ in range(steps):
        run.step()
    return run


@pytest.fixture
def one_thread():
    """A net this small runs its steps faster on one thread than on two contended ones."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_two_models_with_different_ops_train_side_by_side(one_thread):
    """Interleaved steps of a reference model and a fused/sub-pixel model: each calls only its own ops
    (counted per model) and ends bitwise where the same model trained alone ends."""
    ref_ops, fast_ops = ops.resolve_ops(REFERENCE, "cpu", MATH), ops.resolve_ops(FAST, "cpu", MATH)
    assert ref_ops.chosen() == {"group_norm_silu": "reference", "hybrid_loss": "reference",
                                "upsample_conv": "reference"}
    assert fast_ops.chosen() == {"group_norm_silu": "fused", "hybrid_loss": "fused", "upsample_conv": "subpixel"}
    assert fast_ops.group_norm_silu.func is group_norm_silu and fast_ops.group_norm_silu.keywords["body"] == "math"
    assert fast_ops.hybrid_loss.func is hybrid_loss and fast_ops.upsample_conv is upsample_conv_subpixel

    ref, fast = Run(ref_ops), Run(fast_ops)
    for _ in range(2):
        before = Counter(fast.calls)
        ref.step()
        assert fast.calls == before, "a step of one model called the other's ops"
        before = Counter(ref.calls)
        fast.step()
        assert ref.calls == before, "a step of one model called the other's ops"
    for run in (ref, fast):  # per step: each norm and upsample module of the net once, the loss once
        norms = sum(isinstance(m, GroupNormSiLU) for m in run.net.modules())
        ups = sum(isinstance(m, UpsampleConv) for m in run.net.modules())
        assert norms > 1 and ups == 1
        assert run.calls == Counter(group_norm_silu=2 * norms, upsample_conv=2 * ups, hybrid_loss=2), run.calls

    for run, kernels in ((ref, REFERENCE), (fast, FAST)):
        solo = alone(kernels, 2)
        assert run.losses == solo.losses
        for name, value in solo.state().items():
            assert torch.equal(run.state()[name], value), name
    assert any(not torch.equal(ref.state()[k], v) for k, v in fast.state().items()), "both ran the same functions"


def test_ops_are_frozen_and_resolved_per_device():
    resolved = ops.resolve_ops(KernelConfig(), "cuda", MATH)
    with pytest.raises(dataclasses.FrozenInstanceError):
        resolved.group_norm_silu = ops.REFERENCE.group_norm_silu
    assert resolved.device == "cuda" and resolved.chosen()["upsample_conv"] == "reference"
    assert ops.resolve_ops(KernelConfig(), "cpu", MATH).chosen()["upsample_conv"] == "subpixel"
    assert build_unet(MODEL, 1, 3).ops is ops.REFERENCE  # no ops given: the references, never a global


def test_resolve_reads_the_environment_overrides(monkeypatch):
    """HYBENGINE_CPU_BACKEND is read when ops are resolved (bodies.environment), never per call."""
    monkeypatch.setenv("HYBENGINE_CPU_BACKEND", "math")
    resolved = ops.resolve_ops(FAST, "cpu")
    assert isinstance(resolved.group_norm_silu, functools.partial)
    assert resolved.choice("group_norm_silu").body == "math" and resolved.hybrid_loss.keywords["body"] == "math"
    monkeypatch.delenv("HYBENGINE_CPU_BACKEND")
    assert resolved.group_norm_silu.keywords["body"] == "math"  # resolved once: the model keeps its ops


# ------------------------------------------------------------------- no module-level table written


MUTATORS = {"update", "clear", "pop", "popitem", "setdefault", "append", "extend", "insert", "remove", "add",
            "discard", "__setitem__", "__delitem__"}


def _root(node: ast.AST) -> ast.AST:
    while isinstance(node, ast.Subscript | ast.Attribute):
        node = node.value
    return node


def _module_names(tree: ast.Module) -> set[str]:
    """Names bound at module level: assignments and imports of this project's modules (relative ones;
    `sys.argv` or `os.environ` are the interpreter's, not a table of ours)."""
    names = set()
    for node in tree.body:
        targets = (node.targets if isinstance(node, ast.Assign) else
                   [node.target] if isinstance(node, ast.AnnAssign | ast.AugAssign) else [])
        for t in targets:
            names |= {n.id for n in ast.walk(t) if isinstance(n, ast.Name)}
        if isinstance(node, ast.ImportFrom) and node.level > 0:
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return names


def _local_names(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> set[str]:
    args = fn.args
    names = {a.arg for a in [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg] if a}
    for node in ast.walk(fn):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
    return names


def module_state_writes(source: str) -> list[str]:
    """Where a function writes state bound at module level: `global` rebinding, item or attribute
    assignment and deletion under a module-level name, or a mutating method called on one."""
    tree = ast.parse(source)
    module = _module_names(tree)
    found = []
    for fn in (n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)):
        ours = module - _local_names(fn)  # module-level names this function does not shadow
        is_module_name = lambda node, ours=ours: isinstance(node, ast.Name) and node.id in ours
        for node in ast.walk(fn):
            if isinstance(node, ast.Global):
                found += [f"{fn.name}: global {name}" for name in node.names]
            targets = (node.targets if isinstance(node, ast.Assign | ast.Delete) else
                       [node.target] if isinstance(node, ast.AugAssign | ast.AnnAssign) else [])
            for t in targets:
                if isinstance(t, ast.Subscript | ast.Attribute) and is_module_name(_root(t)):
                    found.append(f"{fn.name}: writes {ast.unparse(t)}")
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in MUTATORS and is_module_name(_root(node.func.value))):
                found.append(f"{fn.name}: calls {ast.unparse(node.func)}")
    return found


def test_the_scan_finds_the_old_op_tables():
    """The scan catches what ops.configure/using and bodies.register_impl/set_cpu_backend used to do."""
    old = '''
_IMPL = {}
_CHOSEN: dict = {}
from . import bodies
def configure(cfg):
    _IMPL["group_norm_silu"] = cfg
    _CHOSEN.update(cfg)
def register(op, name, impl):
    bodies._impls[op][name] = impl
def restore(saved):
    global _IMPL
    _IMPL = saved
def fine(table):
    table["x"] = 1
    local = {}
    local["y"] = 2
'''
    assert module_state_writes(old) == [
        "configure: writes _IMPL['group_norm_silu']", "configure: calls _CHOSEN.update",
        "register: writes bodies._impls[op][name]", "restore: global _IMPL"]


# Module state that is no op choice, each with its reason; anything else found fails the test.
NOT_OP_TABLES = {
    "hybengine/runtime/cpu_malloc.py": {"tune: global _tuned": "the C allocator is tuned once per process"},
    "kernels/launch.py": {"target_programs: writes _SM_COUNT[idx]": "a cache of each GPU's SM count"},
    "hybengine/runtime/faults.py": {"maybe_kill_at_file: writes _file_writes[name]":
                                    "fault injection for the kill tests: counts a file's writes in this process"},
}


@pytest.mark.parametrize("folder", ["hybengine", "kernels"])
def test_no_module_writes_a_module_level_table_after_import(folder):
    found = {}
    for path in sorted((REPO / folder).rglob("*.py")):
        name = str(path.relative_to(REPO))
        hits = [h for h in module_state_writes(path.read_text()) if h not in NOT_OP_TABLES.get(name, {})]
        if hits:
            found[name] = hits
    assert not found, found
