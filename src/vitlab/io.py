"""Atomic file writes: a kill mid-write leaves the previous file intact."""
from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success fsync it, give it the mode a plain open() would (0666
    less the umask: mkstemp makes it 0600, private), and rename it over `path` (atomic on POSIX)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp_path, 0o666 & ~current_umask())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def current_umask() -> int:
    """The process umask, read without changing it where Linux shows it (/proc/self/status); elsewhere set and
    restored at once (os.umask is the only portable way to read it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_json(path: str | Path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def unique_stems(stems: list[str]) -> list[str]:
    """Output names for inputs in one call: each stem as given, a repeated one suffixed _2, _3, ... in order
    (a/case.png and b/case.png write case_* and case_2_*, not one file over the other)."""
    seen: dict[str, int] = {}
    taken = set(stems)
    out = []
    for stem in stems:
        n = seen.get(stem, 0) + 1
        name = stem if n == 1 else f"{stem}_{n}"
        while n > 1 and name in taken:            # a suffixed name that is itself an input's stem
            n += 1
            name = f"{stem}_{n}"
        seen[stem] = n
        taken.add(name)
        out.append(name)
    return out
