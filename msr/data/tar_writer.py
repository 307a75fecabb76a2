"""A lean writer of WebDataset tar shards: per sample `{key}.json` and `{key}.npy` members.

The same format `webdataset.TarWriter` writes (POSIX tar; `.npy` in numpy's own format), read back
by `webdataset.WebDataset` (tested), at half its cost per sample: the array's buffer goes to the
file as it is, with no intermediate copies, and headers are built once per member with integer
mtime 0 and a fixed owner, so the same content always gives the same bytes. Every byte written
passes through a sha256, so a shard's checksum costs no second read.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from typing import Any, BinaryIO

import numpy as np

BLOCK = 512
RECORD = 20 * BLOCK  # tar pads the archive to whole records, as tarfile does


class ShardWriter:
    """Write samples to `f`; `close()` ends the archive. `size` and `hexdigest()` describe it."""

    def __init__(self, f: BinaryIO) -> None:
        self.f, self.size = f, 0
        self._sha = hashlib.sha256()
        self._npy_headers: dict[tuple[str, tuple[int, ...]], bytes] = {}

    def write(self, key: str, meta: dict[str, Any], features: np.ndarray | None = None) -> None:
        """One sample: `{key}.json` from `meta`, and `{key}.npy` from `features` if given."""
        self._member(f"{key}.json", json.dumps(meta).encode())
        if features is not None:
            arr = np.ascontiguousarray(features)
            self._member(f"{key}.npy", self._npy_header(arr), arr.reshape(-1).view(np.uint8).data)

    def close(self) -> None:
        self._put(b"\0" * (2 * BLOCK))  # end-of-archive marker
        self._put(b"\0" * (-self.size % RECORD))

    def hexdigest(self) -> str:
        return self._sha.hexdigest()

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, kind: object, *_: object) -> None:
        if kind is None:
            self.close()

    def _member(self, name: str, *parts: bytes | memoryview) -> None:
        size = sum(len(p) for p in parts)
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = size, 0o444, 0
        info.uname = info.gname = "msr"
        self._put(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))
        for part in parts:
            self._put(part)
        self._put(b"\0" * (-size % BLOCK))

    def _npy_header(self, arr: np.ndarray) -> bytes:
        shape_key = (arr.dtype.str, arr.shape)
        if shape_key not in self._npy_headers:
            buf = io.BytesIO()
            np.lib.format.write_array_header_1_0(buf, np.lib.format.header_data_from_array_1_0(arr))
            self._npy_headers[shape_key] = buf.getvalue()
        return self._npy_headers[shape_key]

    def _put(self, data: bytes | memoryview) -> None:
        self._sha.update(data)
        self.size += len(data)
        self.f.write(data)
