"""The allocator settings for the feature-caching loop take effect."""

from __future__ import annotations

import platform

from PIL import Image

from msr.utils.memory import retain_freed_memory


def test_retain_freed_memory_sets_the_allocator() -> None:
    before = Image.core.get_blocks_max()
    try:
        kept = retain_freed_memory(pillow_blocks=7)
        assert Image.core.get_blocks_max() == 7
        assert kept == (platform.libc_ver()[0] == "glibc")  # glibc accepts both thresholds
    finally:
        Image.core.set_blocks_max(before)
