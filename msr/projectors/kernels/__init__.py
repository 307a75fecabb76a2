"""Native CPU kernels, built from C source at first use and cached per machine.

A kernel here is a plain C file with no dependency beyond libc, compiled by the system C compiler
(`$CC`, else `cc`) into `$MSR_KERNEL_CACHE` (default `$XDG_CACHE_HOME/msr/kernels`, else
`~/.cache/msr/kernels`) and loaded with ctypes. The build takes well under a second; the file name
carries a hash of the source, the flags, the compiler and the CPU, so a changed source or another
machine gets its own build, and concurrent processes each rename a finished file into place.

Where no compiler is found or the build fails, `load` logs why once and returns None: callers then
use their PyTorch implementation. `MSR_KERNELS=0` forces that fallback.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

SOURCE_DIR = Path(__file__).parent
# -ffinite-math-only / -fno-signed-zeros let comparisons become min/max and blends (1.6× here); the
# kernels multiply every result by its input, so a NaN or inf input still reaches the output.
FLAGS = (
    "-O3",
    "-march=native",
    "-ffp-contract=fast",
    "-fno-math-errno",
    "-fno-trapping-math",
    "-ffinite-math-only",
    "-fno-signed-zeros",
    "-fPIC",
    "-shared",
)


def enabled() -> bool:
    """False when `MSR_KERNELS=0` asks for the PyTorch implementations."""
    return os.environ.get("MSR_KERNELS", "1") != "0"


def cache_dir() -> Path:
    if os.environ.get("MSR_KERNEL_CACHE"):
        return Path(os.environ["MSR_KERNEL_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "msr" / "kernels"


def _cpu_signature() -> str:
    """What -march=native depends on: the CPU's feature flags where Linux lists them."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _compiler() -> str | None:
    return shutil.which(os.environ.get("CC", "cc"))


@functools.cache
def load(name: str) -> ctypes.CDLL | None:
    """The compiled kernel `name` (source `kernels/<name>.c`), or None with the reason logged."""
    if not enabled():
        return None
    source = SOURCE_DIR / f"{name}.c"
    cc = _compiler()
    if cc is None:
        log.warning(
            "no C compiler (%s): %s runs its PyTorch fallback", os.environ.get("CC", "cc"), name
        )
        return None
    try:
        version = subprocess.run(
            [cc, "--version"], capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError) as err:
        log.warning("C compiler %s unusable (%s): %s runs its PyTorch fallback", cc, err, name)
        return None
    key = hashlib.sha256(
        "\0".join([source.read_text(), *FLAGS, version, _cpu_signature()]).encode()
    ).hexdigest()[:16]
    target = cache_dir() / f"{name}-{key}.so"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
        os.close(fd)
        try:
            build = subprocess.run(
                [cc, *FLAGS, "-o", tmp, str(source)], capture_output=True, text=True
            )
            if build.returncode != 0:
                log.warning(
                    "building %s failed (%s exit %d): %s; running its PyTorch fallback",
                    name,
                    cc,
                    build.returncode,
                    build.stderr.strip()[-2000:],
                )
                return None
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return ctypes.CDLL(str(target))


__all__ = ["cache_dir", "enabled", "load"]
