"""hybengine: a training engine for hybrid diffusion models (denoise + segment, one U-Net).

`kernels/` installs as `hybengine.kernels` (a PyPI package already owns the top-level name
`kernels`). torch is deliberately left unpinned: CPU machines install through
`constraints/cpu.txt`, GPU machines keep the torch they have.

The native part (CMakeLists.txt: libhybengine_native, the CPU kernels of the fused ops) is built
by `build_ext` below against the torch of the interpreter that installs the package, on
`pip install -e .` and `pip install .` alike. It is optional: without cmake, a C++ compiler or an
installed torch the build is skipped with a warning, the package installs, and the ops run their
math/reference paths. HYBENGINE_BUILD_NATIVE=0 skips it, =1 makes a failed build an error; under
CI (CI=true) it defaults to 1, so that CI never passes by silently skipping the native tests.
"""
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
NATIVE_EXT = "hybengine.kernels.native.libhybengine_native"  # the package dir gets libhybengine_native.so
NATIVE_LIB = "libhybengine_native.so"
STAMP = "build.json"  # beside the library: the torch it was built against (checked before loading)


class NativeBuildError(RuntimeError):
    pass


def _torch_for_build() -> tuple[str, str]:
    """(CMake prefix path, version) of the torch that will import this package.

    pip's isolated build environment hides the target environment's site-packages, so when torch
    does not import here, ask the same interpreter without the isolation's path overrides.
    """
    code = "import torch, torch.utils; print(torch.utils.cmake_prefix_path); print(torch.__version__)"
    try:
        import torch
        import torch.utils

        return torch.utils.cmake_prefix_path, torch.__version__
    except ImportError:
        pass
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONNOUSERSITE", "PYTHONHOME")}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd="/")
    if proc.returncode != 0:
        raise NativeBuildError("torch is not installed in this environment (install torch first)")
    prefix, version = proc.stdout.split()[-2:]
    return prefix, version


def build_native(build_root: Path) -> tuple[Path, str]:
    """Configures and builds CMakeLists.txt; returns (the library, the torch version it targets)."""
    cmake = shutil.which("cmake")
    if cmake is None:
        raise NativeBuildError("cmake not found")
    prefix, version = _torch_for_build()
    # one build folder per (torch, interpreter): a cached Torch_DIR never points at another torch
    key = hashlib.sha1(f"{prefix}|{version}|{sys.executable}".encode()).hexdigest()[:10]
    build_dir = build_root / f"native-{key}"
    configure = [cmake, "-S", str(ROOT), "-B", str(build_dir), f"-DCMAKE_PREFIX_PATH={prefix}",
                 "-DCMAKE_BUILD_TYPE=Release"]
    if shutil.which("ninja") and not (build_dir / "CMakeCache.txt").exists():
        configure += ["-G", "Ninja"]
    jobs = str(max(1, os.cpu_count() or 1))
    for cmd in (configure, [cmake, "--build", str(build_dir), "-j", jobs]):
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise NativeBuildError(f"`{' '.join(cmd[:2])} ...` failed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    return build_dir / NATIVE_LIB, version


class CMakeBuild(build_ext):
    """build_ext whose one extension is the CMake-built library, copied into the package."""

    def get_ext_filename(self, fullname: str) -> str:
        # called with the dotted name and with its last part: both get the plain name that CMake
        # and the loader use, not an ABI-tagged one
        if fullname.split(".")[-1] == NATIVE_EXT.split(".")[-1]:
            return os.path.join(*fullname.split(".")[:-1], NATIVE_LIB)
        return super().get_ext_filename(fullname)

    def build_extension(self, ext: Extension) -> None:
        if ext.name != NATIVE_EXT:
            return super().build_extension(ext)
        mode = os.environ.get("HYBENGINE_BUILD_NATIVE", "1" if os.environ.get("CI") == "true" else "auto")
        target = Path(self.get_ext_fullpath(ext.name))
        for stale in (target, target.parent / STAMP):  # a reused build/lib must not ship an old library
            stale.unlink(missing_ok=True)
        if mode == "0":
            self.warn("hybengine: native CPU kernels skipped (HYBENGINE_BUILD_NATIVE=0)")
            return
        try:
            lib, torch_version = build_native(ROOT / "build")
        except NativeBuildError as err:
            if mode == "1":
                raise
            self.warn(f"hybengine: native CPU kernels not built ({err}); CPU ops use their math/reference paths")
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(lib, target)
        (target.parent / STAMP).write_text(json.dumps({"torch": torch_version}) + "\n")

    def copy_extensions_to_source(self) -> None:
        """Editable installs: the library goes to kernels/native/, and its stamp with it."""
        super().copy_extensions_to_source()
        built = Path(self.build_lib, *NATIVE_EXT.split(".")[:-1], STAMP)
        if built.is_file():
            shutil.copyfile(built, Path(self.get_ext_fullpath(NATIVE_EXT)).parent / STAMP)


setup(
    name="hybengine",
    version="0.1.0",
    description="Training engine for label-efficient segmentation with hybrid diffusion models",
    license="Apache-2.0",
    license_files=["LICENSE"],
    python_requires=">=3.10",
    packages=["hybengine", "hybengine.data", "hybengine.finetune", "hybengine.runtime", "hybengine.kernels",
              "hybengine.kernels.native"],
    package_dir={"hybengine": "hybengine", "hybengine.kernels": "kernels"},
    ext_modules=[Extension(NATIVE_EXT, sources=[], optional=True)],  # optional: installs without it
    cmdclass={"build_ext": CMakeBuild},
    entry_points={"console_scripts": ["hybengine=hybengine.console:main"]},  # hybengine/console.py
    install_requires=[
        "torch>=2.6",
        "numpy",
        "einops",
        "rich",
        "pyyaml",
        "pillow",
        "tifffile",
        "safetensors",  # `hybengine export`: weights any framework reads
    ],
    extras_require={
        "triton": ["triton"],
        "deepspeed": ["deepspeed"],
        # DALI ships one wheel per CUDA major; its CPU pipelines (the tests) need one too (no CPU-only wheel)
        "dali": ["nvidia-dali-cuda130"],
        "dali-cuda130": ["nvidia-dali-cuda130"],
        "dali-cuda120": ["nvidia-dali-cuda120"],
        "onnx": ["onnx", "onnxscript", "onnxruntime"],  # `hybengine export --onnx`
        "plots": ["matplotlib"],
        "tensorboard": ["tensorboard"],  # train.tensorboard=true
        "dev": ["pytest", "pytest-xdist", "ruff", "triton", "deepspeed", "matplotlib", "hypothesis", "onnx",
                "onnxscript", "onnxruntime"],
    },
)
