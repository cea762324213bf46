"""Writing training checkpoints so that a crash never leaves a half-written file.

Lightning's own `TorchCheckpointIO` serialises into memory and then writes through an
fsspec transaction, whose temporary file lives in the system temp folder. When that folder
is on another file system than the checkpoints (a tmpfs /tmp, a cluster's scratch disk), the
final "move" is a copy that truncates `last.ckpt` first, and a kill during the copy leaves a
broken file. `AtomicCheckpointIO` writes beside the target and renames over it instead.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from fsspec.implementations.local import LocalFileSystem
from lightning_fabric.utilities.cloud_io import get_filesystem
from pytorch_lightning.plugins import TorchCheckpointIO


class AtomicCheckpointIO(TorchCheckpointIO):
    """Save local checkpoints atomically: `torch.save` into a hidden temporary file in the same
    folder, flush it to disk, then `os.replace` it over the target (atomic on POSIX and Windows).

    A reader sees the old checkpoint or the new one, never a mix. After a hard kill mid-save a
    `.<pid>.ckpt-partial` file may be left in the folder; it is never picked up (its name has
    no "last", so `--ckpt_path last` ignores it) and is safe to delete. Remote paths (s3://, ...)
    go through Lightning's fsspec transaction as before.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None or not isinstance(get_filesystem(path), LocalFileSystem):
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{os.getpid()}.ckpt-partial")
        try:
            with open(partial, "wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(partial, path)
        finally:
            partial.unlink(missing_ok=True)  # only still there if saving failed
        _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself survive a power cut (POSIX; a no-op where folders cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
