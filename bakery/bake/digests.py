"""File digests remembered between runs, so an unchanged 1 GB upload is not re-read to learn
that the recipe's inputs have not changed.

An entry is trusted only while the file's identity and stat (inode, size, mtime, ctime) are
the same, and only if the file was already older than the digest by a margin: a file written
in the same clock tick as its digest could change again without its mtime moving (git's
"racily clean" problem), so such entries are recomputed.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

RACY_SECONDS = 2.0


class DigestCache:
    def __init__(self, path: Path | None):
        self.path = path
        self.entries: dict[str, list] = {}
        self.dirty = False
        if path is not None:
            try:
                self.entries = json.loads(path.read_text())
            except (OSError, ValueError):
                self.entries = {}  # missing or damaged: start over

    def sha256(self, file: Path) -> bytes:
        st = file.stat()
        stamp = [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]
        key = str(file.resolve())
        cached = self.entries.get(key)
        if cached and cached[0] == stamp and cached[2] - st.st_mtime_ns / 1e9 > RACY_SECONDS:
            return bytes.fromhex(cached[1])
        with file.open("rb") as fh:
            digest = hashlib.file_digest(fh, "sha256").digest()
        self.entries[key] = [stamp, digest.hex(), time.time()]
        self.dirty = True
        return digest

    def save(self) -> None:
        if self.path is None or not self.dirty:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        live = {k: v for k, v in self.entries.items() if os.path.exists(k)}
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(live))
        tmp.replace(self.path)
        self.dirty = False
