"""Files: written so a later run trusts them (all of the new content or none of it), files a
stranger may hand us read within a bound, and output folders a command writes into, made or
refused in one line, and replaced whole.

    write_text_atomic(path, text)                           # a split or vocabulary file
    data = read_at_most(path, 2**20)                        # None when the file is longer
    make_folder(args.out)                                   # attend: a folder to add files to
    replace_folder(out, {"config.json": b"..."}, names)     # export: the folder is these files

`replace_folder` writes every file into a hidden folder beside the target and renames it into
place, so a failure leaves nothing half-written and a folder written again keeps no file of the
previous time. Files and folders get the usual permissions (0666 and 0777 less the umask).
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Collection, Mapping
from pathlib import Path

from captioner.errors import CaptionerError


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write `text` (UTF-8) to `path` through a temporary file in the same folder and `os.replace`,
    so a reader sees the old file or the new one, never a half-written one. Creates the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        with open(partial, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)  # only still there if writing failed
    return path


def read_at_most(path: Path, max_bytes: int) -> bytes | None:
    """The contents of the file at `path`, or None when it holds more than `max_bytes` (only
    that much more is read, and no buffer larger than the file is made). Raises OSError."""
    with open(path, "rb") as file:
        size = os.fstat(file.fileno()).st_size  # 0 for files of /proc and the like: read them up to the bound
        data = file.read(min(size, max_bytes) + 1) if size else file.read(max_bytes + 1)
    return None if len(data) > max_bytes else data


def make_folder(out: Path, flag: str = "--out") -> None:
    """Create the folder `out` (and its parents) and make sure a file can be written in it;
    otherwise raise CaptionerError naming `flag`, `out` and why (a file in the way, a read-only
    or virtual file system, no permission)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".{os.getpid()}.{secrets.token_hex(4)}.probe"
        probe.touch(exist_ok=False)
        probe.unlink()
    except OSError as error:
        raise _cannot_write(out, flag, error) from None


def replace_folder(out: Path, files: Mapping[str, bytes], replaceable: Collection[str], flag: str = "--out") -> None:
    """Make `out` a folder holding exactly `files` (name -> content), whether it exists or not.

    An existing `out` may hold only regular files named in `replaceable` (an earlier version of
    the same folder); anything else there is refused, never deleted. On any failure `out` is as
    it was and nothing is left beside it (after a hard kill, a hidden `.NAME.*.partial` folder
    may remain; it is safe to delete)."""
    if out.exists():
        out = out.resolve()  # the folder a link or "." names: it is what gets replaced
        if not out.is_dir():
            raise CaptionerError(f"{flag} {out} is a file; name a folder")
        for entry in sorted(out.iterdir()):
            if entry.name not in replaceable or entry.is_symlink() or not entry.is_file():
                kind = "a folder" if entry.is_dir() else "not a file it writes"
                raise CaptionerError(
                    f"{flag} {out} holds {entry.name}, {kind}; this command replaces the whole folder, so name "
                    "a new folder or one it wrote before"
                )
    stem = f".{out.name}.{os.getpid()}.{secrets.token_hex(4)}"
    partial, previous = out.with_name(stem + ".partial"), out.with_name(stem + ".replaced")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        partial.mkdir()
        for name, data in files.items():
            (partial / name).write_bytes(data)
        if out.exists():
            os.rename(out, previous)
            try:
                os.rename(partial, out)
            except OSError:
                os.rename(previous, out)
                raise
            shutil.rmtree(previous, ignore_errors=True)
        else:
            os.rename(partial, out)
    except OSError as error:
        raise _cannot_write(out, flag, error) from None
    finally:
        shutil.rmtree(partial, ignore_errors=True)  # still there only when something failed


def _cannot_write(out: Path, flag: str, error: OSError) -> CaptionerError:
    """The one line for an OSError met while making or writing the folder `out`."""
    blocker = next((p for p in [*reversed(out.parents), out] if p.exists() and not p.is_dir()), None)
    if blocker == out:
        return CaptionerError(f"{flag} {out} is a file, not a folder; name a folder (it is created if missing)")
    if blocker is not None:
        return CaptionerError(f"{flag} {out} lies under {blocker}, which is a file; name a folder")
    reason = error.strerror or str(error)
    return CaptionerError(f"{flag} {out} cannot be written ({reason}); name a folder you can write")
