"""Layer store: local "AMIs" as overlayfs layers stacked on the base rootfs.

An image is the tar.zst of a builder's overlay upper dir plus its parent's id. Instances mount
``lowerdir=image:parent:...:base``, so each layer is extracted once (lazily, read-only by
convention) and shared by every instance. The tar keeps ``trusted.overlay.*`` xattrs: without
them an opaque directory (deleted and recreated in the bake) would show the parent's old contents.
Whiteouts (char 0:0 devices) survive tar unchanged.

Layout under ``root``: ``<image_id>/meta.json``, ``<image_id>/layer.tar.zst``, ``<image_id>/fs/``.
A base rootfs is registered by path (``kind: base``) and is not copied.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bakery.local.errors import LocalCloudError

TAR_XATTR_ARGS = (
    "--numeric-owner",
    "--xattrs",
    "--xattrs-include=trusted.overlay.*",
    "--xattrs-include=security.capability",
)
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class LayerStore:
    """Registered images (layers and bases) under ``root``; safe to use from several processes."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    # -- helpers -------------------------------------------------------------------------------
    def _dir(self, image_id: str) -> Path:
        if not _ID_RE.match(image_id):
            raise LocalCloudError(f"invalid image id {image_id!r}: use letters, digits, '.', '_' or '-'")
        return self.root / image_id

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _write_meta(self, image_id: str, meta: dict[str, object]) -> None:
        path = self._dir(image_id) / "meta.json"
        tmp = path.with_name(f".meta.json.{os.getpid()}")
        tmp.write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, path)

    def meta(self, image_id: str) -> dict[str, object]:
        """The stored record: id, kind (layer|base), parent, sha256, size, created, meta."""
        path = self._dir(image_id) / "meta.json"
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            raise LocalCloudError(f"image {image_id} is not registered in the layer store {self.root}") from None
        except (OSError, ValueError):
            raise LocalCloudError(
                f"layer for {image_id} is missing or corrupt: {path}; re-bake the image or deregister it"
            ) from None

    def update_meta(self, image_id: str, updates: dict[str, object]) -> None:
        """Merge ``updates`` into an image's caller-owned ``meta`` (e.g. its EC2 tags)."""
        with self._locked():
            record = self.meta(image_id)
            record["meta"] = {**dict(record.get("meta") or {}), **updates}
            self._write_meta(image_id, record)

    def layer_file(self, image_id: str) -> Path:
        return self._dir(image_id) / "layer.tar.zst"

    # -- registration --------------------------------------------------------------------------
    def add_base(self, image_id: str, rootfs: Path, meta: dict[str, object]) -> None:
        """Register a base rootfs directory (from ``base.ensure_base_image``) as a root image."""
        rootfs = Path(rootfs).resolve()
        if not (rootfs / "etc").is_dir():
            raise LocalCloudError(f"base rootfs for {image_id} is missing: {rootfs}; rebuild it with ensure_base_image")
        with self._locked():
            self._dir(image_id).mkdir(parents=True, exist_ok=True)
            record = {
                "id": image_id,
                "kind": "base",
                "parent": None,
                "path": str(rootfs),
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "meta": meta,
            }
            self._write_meta(image_id, record)

    def add(self, image_id: str, tar_zst: Path, parent: str | None, meta: dict[str, object]) -> None:
        """Register a layer tar.zst (hard-linked, or copied across filesystems; the caller keeps
        its file). ``parent`` is the image this layer was baked on; None only for a self-contained
        (flattened) rootfs tar."""
        src = Path(tar_zst)
        if not src.is_file():
            raise LocalCloudError(f"layer file for {image_id} not found: {src}")
        with self._locked():
            if parent is not None:
                self.meta(parent)  # raises if the parent is unknown
            d = self._dir(image_id)
            if (d / "meta.json").exists():
                raise LocalCloudError(f"image {image_id} is already registered in {self.root}; remove it first")
            shutil.rmtree(d, ignore_errors=True)
            d.mkdir(parents=True)
            dest = self.layer_file(image_id)
            tmp = d / ".layer.tar.zst.tmp"
            try:
                os.link(src, tmp)
            except OSError:
                try:
                    shutil.copyfile(src, tmp)
                except OSError as exc:
                    shutil.rmtree(d, ignore_errors=True)
                    raise LocalCloudError(
                        f"cannot store layer for {image_id} in {d}: {exc.strerror or exc}; free disk space and retry"
                    ) from None
            os.replace(tmp, dest)
            record = {
                "id": image_id,
                "kind": "layer",
                "parent": parent,
                "sha256": _sha256(dest),
                "size": dest.stat().st_size,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "meta": meta,
            }
            self._write_meta(image_id, record)

    def list(self) -> list[dict[str, object]]:
        """All registered images' records, oldest first."""
        if not self.root.is_dir():
            return []
        records = []
        for d in sorted(self.root.iterdir()):
            if d.is_dir() and not d.name.startswith(".") and (d / "meta.json").is_file():
                try:
                    records.append(json.loads((d / "meta.json").read_text()))
                except (OSError, ValueError):
                    records.append({"id": d.name, "kind": "corrupt", "parent": None, "created": ""})
        return sorted(records, key=lambda r: (str(r.get("created", "")), str(r["id"])))

    def children(self, image_id: str) -> list[str]:
        return [str(r["id"]) for r in self.list() if r.get("parent") == image_id]

    def remove(self, image_id: str) -> None:
        """Deregister an image and delete its files (a base's rootfs is left to its owner).

        Refuses while another image is stacked on it; running instances are the caller's check.
        """
        with self._locked():
            self.meta(image_id)
            kids = self.children(image_id)
            if kids:
                raise LocalCloudError(
                    f"cannot remove {image_id}: images {', '.join(kids)} are built on it; remove those first"
                )
            d = self._dir(image_id)
            trash = d.with_name(f".trash-{image_id}-{os.getpid()}")
            os.rename(d, trash)  # atomic deregistration, then the slow delete
            shutil.rmtree(trash, ignore_errors=True)

    # -- use -----------------------------------------------------------------------------------
    def verify(self, image_id: str) -> None:
        """Check one image's own files (tar checksum, or base rootfs presence)."""
        record = self.meta(image_id)
        if record.get("kind") == "base":
            path = Path(str(record.get("path", "")))
            if not (path / "etc").is_dir() or not (path / "usr").is_dir():
                raise LocalCloudError(
                    f"layer for {image_id} is missing or corrupt: {path}; rebuild the base image"
                )
            return
        path = self.layer_file(image_id)
        try:
            ok = path.stat().st_size == record.get("size") and _sha256(path) == record.get("sha256")
        except OSError:
            ok = False
        if not ok:
            raise LocalCloudError(
                f"layer for {image_id} is missing or corrupt: {path}; re-bake the image or deregister it"
            )

    def chain(self, image_id: str) -> list[str]:
        """Image ids from ``image_id`` down to its root image."""
        ids: list[str] = []
        current: str | None = image_id
        while current is not None:
            if current in ids:
                raise LocalCloudError(f"layer store {self.root} has a parent cycle at {current}")
            ids.append(current)
            parent = self.meta(current).get("parent")
            current = str(parent) if parent is not None else None
        return ids

    def lowers(self, image_id: str) -> list[Path]:
        """Overlay lower dirs for an instance of ``image_id``: topmost first, base rootfs last."""
        paths: list[Path] = []
        for iid in self.chain(image_id):
            record = self.meta(iid)
            if record.get("kind") == "base":
                self.verify(iid)
                paths.append(Path(str(record["path"])))
            else:
                paths.append(self._extracted(iid))
        return paths

    def _extracted(self, image_id: str) -> Path:
        fs = self._dir(image_id) / "fs"
        if fs.is_dir():  # only ever created by the atomic rename below
            return fs
        with self._locked():
            if fs.is_dir():
                return fs
            self.verify(image_id)
            d = self._dir(image_id)
            for stale in d.glob(".fs-*"):
                shutil.rmtree(stale, ignore_errors=True)
            tmp = Path(tempfile.mkdtemp(prefix=".fs-", dir=d))
            os.chmod(tmp, 0o755)  # the layer's root dir; tar restores the captured mode if present
            src = self.layer_file(image_id)
            cmd = ["tar", "--zstd", *TAR_XATTR_ARGS, "-xpf", str(src), "-C", str(tmp)]
            proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True)
            if proc.returncode != 0:
                shutil.rmtree(tmp, ignore_errors=True)
                first = (proc.stderr.strip().splitlines() or ["?"])[0]
                raise LocalCloudError(
                    f"layer for {image_id} is missing or corrupt: {src} ({first}); command: {' '.join(cmd)}"
                )
            os.rename(tmp, fs)
        return fs
