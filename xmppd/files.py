"""Files that are replaced whole or not at all (certificates, keys, exports)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO


@contextmanager
def replaced_atomically(path: str, mode: int) -> Iterator[IO[bytes]]:
    """A new file with permissions `mode`, written in path's directory and renamed over `path` once the
    block is done and the data is on disk; removed if the block fails. So `path` never holds half a
    file, even after a crash, and is never readable by others while it is being written."""
    directory = os.path.dirname(os.path.abspath(path))
    descriptor, temporary = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        os.fchmod(descriptor, mode)
        with os.fdopen(descriptor, "wb") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise
