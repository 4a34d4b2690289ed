"""An upload as it reaches the machine: the entries it carries, as a tar stream, and the shell
command that unpacks it.

One description serves every place an upload appears, so they cannot disagree: the bake streams
it over SSH (bakery/remote/ssh.py), the bootstrap strategy carries it inline in the user data
(render/bootstrap.py), and the inputs hash covers exactly these entries (bake/inputs.py).

What an upload carries, as rsync -a and Packer's file provisioner do: the file, or every file,
directory and symlink of the tree, with the source's permission bits (setuid, setgid and sticky
included) and symlinks as links, never followed. `mode` replaces the bits of every regular file,
`dir_mode` those of every directory; `owner` (USER or USER:GROUP; without a group, the
uploading user's, as `chown USER` leaves it) owns every entry. Modification times do not travel
(files get the time of the bake), so a fresh checkout of the same recipe is not a change.

What it leaves alone: anything at dest the source does not have, and every directory that is
already there (dest itself included) keeps its mode and owner; a symlink to a directory stays a
symlink (merged /usr: /lib -> usr/lib). A directory the upload creates gets the tree's mode (or
dir_mode) and owner; a file the source has replaces the one at dest (a new file: the upload's
mode and owner, never written through a symlink). The mode and owner are in each entry's tar
header, so nothing is chmod'ed or chown'ed after the fact: what was there before cannot be hit.
"""

from __future__ import annotations

import os
import posixpath
import shlex
import stat
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

from bakery.errors import ConfigError

MEMBER = "upload"  # a single file travels under this name and is renamed to dest on arrival
COPY_CHUNK = 256 * 1024


@dataclass(frozen=True)
class Entry:
    name: str                             # inside the upload: "." is the tree itself
    kind: Literal["file", "dir", "link"]
    mode: int                             # permission bits as they land
    source: Path                          # the local file or directory
    target: str = ""                      # a link's target, as written


def entries(local: Path, mode: str | None, dir_mode: str | None, where: str) -> list[Entry]:
    """What uploading `local` carries, sorted by name; `where` names the field for errors."""
    file_mode = int(mode, 8) if mode else None
    tree_mode = int(dir_mode, 8) if dir_mode else None
    st = local.stat()
    if stat.S_ISREG(st.st_mode):
        return [Entry(MEMBER, "file", file_mode if file_mode is not None else stat.S_IMODE(st.st_mode), local)]
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"{where}: {str(local)!r} is {_kind(st.st_mode)}; an upload is a file or a directory")
    found = [Entry(".", "dir", tree_mode if tree_mode is not None else stat.S_IMODE(st.st_mode), local)]
    # os.scandir rather than rglob: links to directories must stay links, never be walked into
    pending = [(local, "")]
    while pending:
        folder, prefix = pending.pop()
        with os.scandir(folder) as listing:
            for item in listing:
                name, st = prefix + item.name, item.stat(follow_symlinks=False)
                path = Path(item.path)
                if stat.S_ISLNK(st.st_mode):
                    found.append(Entry(name, "link", 0o777, path, os.readlink(path)))
                elif stat.S_ISDIR(st.st_mode):
                    found.append(Entry(name, "dir", tree_mode if tree_mode is not None else stat.S_IMODE(st.st_mode),
                                       path))
                    pending.append((path, name + "/"))
                elif stat.S_ISREG(st.st_mode):
                    found.append(Entry(name, "file", file_mode if file_mode is not None else stat.S_IMODE(st.st_mode),
                                       path))
                else:
                    raise ConfigError(f"{where}: {str(path)!r} is {_kind(st.st_mode)}; an upload carries regular "
                                      "files, directories and symlinks only")
    return sorted(found, key=lambda e: e.name)


def _kind(mode: int) -> str:
    return ("a fifo" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
            else "a device" if stat.S_ISBLK(mode) or stat.S_ISCHR(mode) else "not a regular file")


def write_tar(out: BinaryIO, items: list[Entry], owner: str | None) -> None:
    """The entries as one tar stream on `out`. Headers are made here, not by TarFile.add: no
    passwd/group lookups per file, the final mode and the owner by name (resolved on the
    machine, which knows its own users), no modification time."""
    user, _, group = (owner or "").partition(":")
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT, copybufsize=COPY_CHUNK) as archive:
        for entry in items:
            info = tarfile.TarInfo(entry.name)
            info.mode, info.mtime, info.uname, info.gname = entry.mode, 0, user, group
            if entry.kind == "dir":
                info.type = tarfile.DIRTYPE
                archive.addfile(info)
            elif entry.kind == "link":
                info.type, info.linkname = tarfile.SYMTYPE, entry.target
                archive.addfile(info)
            else:
                with entry.source.open("rb") as fh:
                    info.size = os.fstat(fh.fileno()).st_size
                    archive.addfile(info, fh)


def unpack_command(dest: str, tree: bool, owner: str | None) -> str:
    """The shell command (for `sh -c`) that unpacks write_tar's stream from stdin to `dest`.

    GNU tar does the work: -m (no times), -p (the header's modes, whatever the umask),
    --same-owner by name (or --no-same-owner: the uploading user owns them),
    --keep-directory-symlink, and --no-overwrite-dir where dest already exists. tar falls back
    to uid 0 for a name it cannot resolve, so an owner is first tried with chown: an unknown
    user or group fails the upload with chown's own message."""
    q = shlex.quote(dest)
    tar = f"tar -x -m -p {'--same-owner' if owner else '--no-same-owner'} --keep-directory-symlink"
    check = (f'p=$(mktemp) && {{ chown {shlex.quote(owner)} "$p" || {{ rm -f "$p"; exit 1; }}; }} && rm -f "$p" && '
             if owner else "")
    if tree:
        return check + (f"if [ -e {q} ]; then exec {tar} --no-overwrite-dir -C {q}; fi && "
                        f"mkdir -p {q} && exec {tar} -C {q}")
    parent = shlex.quote(posixpath.dirname(dest))
    # unpacked beside dest and renamed over it: a reader never sees half a file
    return check + (f"mkdir -p {parent} && t=$(mktemp -d {parent}/.bakery-upload.XXXXXXXX) && "
                    f'{{ {tar} -C "$t" && mv -f -T "$t"/{MEMBER} {q}; rc=$?; rm -rf "$t"; exit $rc; }}')
