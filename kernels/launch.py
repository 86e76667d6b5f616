"""Launch planning shared by the kernels: how many programs share one reduction row.

A "row" is what one program would naturally own (a (sample, group) of GroupNorm, a sample of the
loss). When there are too few rows to fill the device, each row's pixels are split into chunks of
a power-of-two length (so power-of-two tiles divide them), each handled by its own program whose
partial results are combined afterwards in a fixed order.
"""
import math

import torch

_SM_COUNT: dict[int, int] = {}


def next_power_of_2(n: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(1, n))))


def target_programs(device: torch.device) -> int:
    """Programs that keep the device busy: 4 per SM on a GPU; few under the CPU interpreter."""
    if device.type != "cuda":
        return 4  # small enough that CPU tests reach the split paths
    idx = device.index if device.index is not None else torch.cuda.current_device()
    if idx not in _SM_COUNT:
        _SM_COUNT[idx] = torch.cuda.get_device_properties(idx).multi_processor_count
    return 4 * _SM_COUNT[idx]


def split_plan(
    rows: int, pixels: int, elems_per_pixel: int, device: torch.device | None, min_elems: int | None = None,
    target: int | None = None,  # programs to aim for; None: `target_programs(device)`
) -> tuple[int, int]:
    """(S, chunk): split each row's `pixels` over S programs of `chunk` pixels when rows are few.

    Chunks hold at least `min_elems` elements (pixels * elems_per_pixel) so programs stay worth it.
    """
    target = target if target is not None else target_programs(device)
    if min_elems is None:
        min_elems = 4096 if device is None or device.type == "cuda" else 256
    if 2 * rows >= target:
        return 1, pixels
    want = math.ceil(target / rows)
    chunk = max(next_power_of_2(math.ceil(pixels / want)), next_power_of_2(math.ceil(min_elems / elems_per_pixel)))
    if chunk >= pixels:
        return 1, pixels
    return math.ceil(pixels / chunk), chunk


def gpu_split_plan(rows: int, pixels: int, elems_per_pixel: int, sms: int = 132) -> tuple[int, int]:
    """The plan `split_plan` makes on a CUDA device with `sms` SMs (132: H100, H200), from any device:
    the traffic counter replays the GPU's launches under the interpreter."""
    return split_plan(rows, pixels, elems_per_pixel, None, target=4 * sms)


MAX_SAMPLE_ELEMS = 2**31 - 1  # offsets inside one sample are 32-bit in the Triton kernels


def check_sample_size(t: torch.Tensor, what: str, op: str) -> None:
    """The Triton kernels index a sample's elements with 32-bit offsets (the sample base is 64-bit);
    a sample of 2**31 elements or more would wrap them, so it is refused before any launch."""
    per_sample = t[0].numel() if t.dim() > 0 and t.shape[0] > 0 else 0
    if per_sample > MAX_SAMPLE_ELEMS:
        raise ValueError(
            f"{op}: one sample of {what} {tuple(t.shape)} holds {per_sample} elements, more than the Triton kernels' "
            f"32-bit in-sample offsets reach ({MAX_SAMPLE_ELEMS}); use kernels.{op}=reference for it, or smaller "
            "crops")


def forced_plan(pixels: int, chunk: int) -> tuple[int, int]:
    """(S, chunk) for a chunk size given by the caller (tests exercising the split paths)."""
    chunk = max(1, min(chunk, pixels))
    return math.ceil(pixels / chunk), chunk
