"""Make `hybengine.kernels` importable from this checkout when the repo is not pip-installed.

setup.py maps the package `hybengine.kernels` to the folder kernels/ (a PyPI package owns the
top-level name `kernels`). On a machine that only has a copy of the tree (the lent GPU machine),
this puts the repo on sys.path and maps that one name the same way. A no-op when installed.
Scripts in benchmarks/ import it before anything from hybengine. Run as a script, it runs a module
of the package the way `python -m` would, on a machine without the install:

    python benchmarks/repo_imports.py hybengine.experiment --config ...
"""
import importlib.abc
import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


class _KernelsFinder(importlib.abc.MetaPathFinder):
    """Resolves `hybengine.kernels` (and so its submodules) to REPO/kernels."""

    def find_spec(self, name, path=None, target=None):
        if name != "hybengine.kernels":
            return None
        kernels = REPO / "kernels"
        return importlib.util.spec_from_file_location(
            name, kernels / "__init__.py", submodule_search_locations=[str(kernels)]
        )


def ensure() -> str:
    """How `hybengine.kernels` resolves: "installed" or "repo path"."""
    try:
        if importlib.util.find_spec("hybengine.kernels") is not None:
            return "installed"
    except ModuleNotFoundError:  # hybengine itself is not importable: use this checkout
        sys.path.insert(0, str(REPO))
    if not any(isinstance(f, _KernelsFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _KernelsFinder())
    return "repo path"


HOW = ensure()

if __name__ == "__main__":
    import runpy

    if len(sys.argv) < 2:
        sys.exit("usage: python benchmarks/repo_imports.py MODULE [ARGS...]")
    sys.argv = sys.argv[1:]
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
