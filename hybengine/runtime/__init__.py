"""Runtime infrastructure that knows nothing of diffusion: process groups (`distributed`), the
plain and DeepSpeed training back-ends (`backends`), atomic files and snapshots (`atomic`,
`checkpoint`), the EMA, run logs, fault hooks for tests, and the CPU allocator switch.

Imports torch and DeepSpeed only, nothing of hybengine above it; the training loop and the tools import it.
"""
