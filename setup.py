"""hybengine: a training engine for hybrid diffusion models (denoise + segment, one U-Net).

`kernels/` installs as `hybengine.kernels` (a PyPI package already owns the top-level name
`kernels`). torch is deliberately left unpinned: CPU machines install through
`constraints/cpu.txt`, GPU machines keep the torch they have.
"""
from setuptools import setup

setup(
    name="hybengine",
    version="0.1.0",
    description="Training engine for label-efficient segmentation with hybrid diffusion models",
    python_requires=">=3.10",
    packages=["hybengine", "hybengine.data", "hybengine.engine", "hybengine.kernels"],
    package_dir={"hybengine": "hybengine", "hybengine.kernels": "kernels"},
    install_requires=[
        "torch>=2.6",
        "numpy",
        "einops",
        "rich",
        "pyyaml",
        "pillow",
        "tifffile",
    ],
    extras_require={
        "triton": ["triton"],
        "deepspeed": ["deepspeed"],
        "dali": ["nvidia-dali-cuda130"],
        "plots": ["matplotlib"],
        "dev": ["pytest", "ruff", "triton", "deepspeed", "matplotlib"],
    },
)
