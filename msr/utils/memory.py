"""Keep freed buffers in the process, for loops that allocate and free the same large buffers.

Caching features allocates, per image, Pillow's decode buffer (~0.45 MB at 336 px) and, per batch,
tensors of ~10 MB, then frees them. glibc returns every block above its mmap threshold to the
system at once, so each new buffer starts as fresh pages: page faults and zeroing, ~5% of the wall
time of `msr features` on a 2-core CPU (measured as kernel time of the encoding threads). Raising
glibc's mmap and trim thresholds keeps such blocks in the heap; Pillow's block cache does the same
for image memory. Process-wide; the cost is up to `trim_mb` of freed memory kept resident.
"""

from __future__ import annotations

import ctypes
import sys

from PIL import Image

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
MMAP_THRESHOLD_MAX = 32 << 20  # glibc refuses more on 64-bit systems


def retain_freed_memory(trim_mb: int = 256, pillow_blocks: int = 32) -> bool:
    """Raise glibc's thresholds (blocks ≤ 32 MiB come from the heap; ≤ `trim_mb` of free heap is
    kept) and cache `pillow_blocks` freed image blocks. False where glibc is not the allocator."""
    Image.core.set_blocks_max(pillow_blocks)
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # musl or another libc
        return False
    return bool(
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)
        and libc.mallopt(M_TRIM_THRESHOLD, trim_mb << 20)
    )
