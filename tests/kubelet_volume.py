"""A ConfigMap volume updated the way the kubelet does it, for the sidecar's tests and bench."""

from __future__ import annotations

import itertools
import os
import shutil
import time
from pathlib import Path

_seq = itertools.count()


def kubelet_update(volume: Path, files: dict[str, bytes]) -> None:
    """Update a ConfigMap volume exactly like the kubelet's AtomicWriter: new timestamped dir,
    ``..data_tmp`` symlink renamed over ``..data``, user-visible symlinks into ``..data``,
    old timestamped dir removed."""
    volume.mkdir(exist_ok=True)
    stamp = time.strftime("..%Y_%m_%d_%H_%M_%S.", time.gmtime()) + f"{next(_seq):09d}"
    (volume / stamp).mkdir()
    for name, content in files.items():
        (volume / stamp / name).write_bytes(content)
    data = volume / "..data"
    old = os.readlink(data) if data.is_symlink() else None
    os.symlink(stamp, volume / "..data_tmp")
    os.rename(volume / "..data_tmp", data)
    for name in files:
        if not (volume / name).is_symlink():
            os.symlink(f"..data/{name}", volume / name)
    for entry in volume.iterdir():
        if entry.is_symlink() and not entry.name.startswith("..") and entry.name not in files:
            entry.unlink()
    if old:
        shutil.rmtree(volume / old)
