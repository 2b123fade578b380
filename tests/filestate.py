"""'Nothing was rewritten', checked without depending on the clock's resolution.

``freeze(paths)`` sets every file's mtime to a fixed instant in the past and returns each file's
(inode, mtime, sha256). A re-run that rewrites a file, in place or by an atomic rename, gives it
a new mtime (now) and, by rename, a new inode; a re-run that leaves it alone keeps all three.
Compare ``states(paths)`` after the re-run with what ``freeze`` returned.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

PAST_NS = 1_000_000_000 * 1_000_000_000  # 2001-09-09: no re-run writes a file with this mtime


def states(paths) -> dict[str, tuple[int, int, str]]:
    out = {}
    for p in map(Path, paths):
        st = p.stat()
        out[str(p)] = (st.st_ino, st.st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
    return out


def freeze(paths) -> dict[str, tuple[int, int, str]]:
    paths = list(paths)
    for p in paths:
        os.utime(p, ns=(PAST_NS, PAST_NS))
    return states(paths)
