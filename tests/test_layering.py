"""The hybengine -> kernels link, drawn from the source (ast), and the newcomer paths the package
docstrings promise (hybengine/__init__.py, kernels/__init__.py).

setup.py maps the top-level kernels/ folder to the package `hybengine.kernels`. The link must be
visible and one-way: kernels/ imports nothing of hybengine outside itself; in hybengine/, only the op
dispatch (ops.py) imports the kernels, plus the `hybengine info` report (console.py); the U-Net and
the objective reach a kernel only through the `Ops` they are built with."""
import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def imported_modules(path: Path, package: str, root: Path) -> set[str]:
    """Absolute names of the modules `path` imports (relative imports resolved inside `package`)."""
    parts = [package, *path.relative_to(root).with_suffix("").parts][:-1]  # relative imports start here
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = parts[:len(parts) - node.level + 1]
                assert len(anchor) >= 1, f"{path}: import above the package root"
                base = ".".join([*anchor, *([base] if base else [])])
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}  # `from . import bodies` names a module
    return found


def test_kernels_import_nothing_of_hybengine_outside_themselves():
    """kernels/ is the ground floor: as `hybengine.kernels` it never reaches back into hybengine."""
    root = REPO / "kernels"
    bad = {}
    for path in sorted(root.rglob("*.py")):
        up = {m for m in imported_modules(path, "hybengine.kernels", root)
              if m.split(".")[0] == "hybengine" and not m.startswith("hybengine.kernels")}
        if up:
            bad[str(path.relative_to(REPO))] = sorted(up)
    assert not bad, bad


def test_only_the_op_dispatch_imports_the_kernels():
    root = REPO / "hybengine"
    importers = set()
    for path in sorted(root.rglob("*.py")):
        if any(m.startswith("hybengine.kernels") for m in imported_modules(path, "hybengine", root)):
            importers.add(str(path.relative_to(REPO)))
    assert importers == {"hybengine/ops.py", "hybengine/console.py"}, importers


def test_the_kernels_folder_installs_as_hybengine_kernels():
    import hybengine.kernels

    assert Path(hybengine.kernels.__file__).resolve() == REPO / "kernels" / "__init__.py"
    assert '"hybengine.kernels": "kernels"' in (REPO / "setup.py").read_text()


def test_a_new_loss_term_touches_the_config_and_the_objective_only():
    """The last term added (soft Dice, `objective.dice_weight`) lives in config.py and objective.py; the
    loops take the objective's per-sample terms whole (`objective.terms`), naming no term's weight."""
    users = {str(p.relative_to(REPO)) for p in (REPO / "hybengine").rglob("*.py")
             if "dice_weight" in p.read_text() or "soft_dice_loss" in p.read_text()}
    assert users == {"hybengine/config.py", "hybengine/objective.py"}, users
    for loop in ("hybengine/training_loop.py", "hybengine/finetune/batched.py"):
        assert "objective.terms(" in (REPO / loop).read_text(), loop


def test_the_package_docstrings_draw_the_link():
    import hybengine
    import hybengine.kernels

    assert "hybengine.kernels" in hybengine.__doc__ and "tests/test_layering.py" in hybengine.__doc__
    assert "hybengine/ops.py" in hybengine.kernels.__doc__ and "tests/test_layering.py" in hybengine.kernels.__doc__
