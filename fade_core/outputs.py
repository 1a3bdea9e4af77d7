"""Where a run's LoRA goes: checked and reserved before any model work, written without ever
replacing a file by surprise, and kept somewhere when writing it fails.

A reservation is a hidden marker file next to the target, ``.<name>.reserved``, created with
O_CREAT | O_EXCL (atomic on every local file system), holding its owner's host and process id. It
guards the name (and its ``-interrupted``/``-diverged`` variants) while the run trains, so two runs
at once can never pick the same name, and it is removed once the result is on disk. Markers and
temporary files of runs that have ended are removed by the next reservation in that folder.
Importable without torch.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from .errors import FadeExportError, FadeInputError
from .files import (
    atomic_write,
    existing_ancestor,
    owner_is_gone,
    owner_tag,
    path_inside,
    remove_stale_partials,
    require_short_names,
)

SUFFIX = ".safetensors"
STATUSES = ("interrupted", "diverged")  # results other than a complete run, written as <name>-<status>
VARIANT_ROOM = len("-interrupted-99")  # the longest addition to a name, kept free under the name limit
MIN_FREE_BYTES = 1 << 20  # checked before any work; the LoRA's own size is checked once it is known
MAX_NUMBER = 99999


class LoraOutput:
    """One reserved output name. Use as a context manager (or call :meth:`release`)."""

    def __init__(self, path: Path, *, overwrite: bool, names: tuple[str, str]) -> None:
        self.path = path
        self.overwrite = overwrite
        self.folder_setting, self.name_setting = names
        self.marker = _marker(path)
        self.owned = False

    # -- making one ---------------------------------------------------------------------------------

    @classmethod
    def named(cls, folder: str | Path, name: str, *, overwrite: bool = False,
              names: tuple[str, str] = ("output folder", "file name")) -> LoraOutput:
        """``folder/name.safetensors``; an existing file there is refused unless ``overwrite``.
        ``names`` say how the user sets the folder and the name (for messages)."""
        check_folder(Path(folder), names[0])
        path = path_inside(folder, name, SUFFIX, setting=names[1])
        require_short_names(path, room=VARIANT_ROOM, setting=names[1])
        output = cls(path, overwrite=overwrite, names=names)
        if path.is_dir():
            raise FadeInputError(f"{path} is a folder; choose another {names[1]}")
        if path.exists() and not overwrite:
            raise FadeInputError(
                f"{path} already exists; choose another {names[1]}, or pass --overwrite to replace it"
            )
        output._reserve_or_explain()
        return output

    @classmethod
    def numbered(cls, folder: str | Path, prefix: str, *,
                 names: tuple[str, str] = ("output folder", "file name prefix")) -> LoraOutput:
        """``folder/<prefix>_00001.safetensors`` with the first number that no file, no variant
        (``-interrupted``, ``-diverged``) and no other run's reservation holds."""
        check_folder(Path(folder), names[0])
        base = path_inside(folder, prefix, SUFFIX, setting=names[1])
        require_short_names(base.with_name(f"{base.stem}_{MAX_NUMBER:05d}{SUFFIX}"), room=VARIANT_ROOM, setting=names[1])
        _prepare(base.parent, names[0])
        for number in range(1, MAX_NUMBER + 1):
            output = cls(base.with_name(f"{base.stem}_{number:05d}{SUFFIX}"), overwrite=False, names=names)
            if output._taken():
                continue
            if output._reserve():
                if not output._taken(ignore_marker=True):
                    return output
                output.release()  # a run finished between the look and the reservation
        raise FadeInputError(f"every number of {base.stem}_NNNNN is taken in {base.parent}; choose another {names[1]}")

    # -- state --------------------------------------------------------------------------------------

    def variant(self, status: str) -> Path:
        return self.path.with_name(f"{self.path.stem}-{status}{SUFFIX}")

    def require_space(self, nbytes: int) -> None:
        """Refuses to start work whose result would not fit on the disk."""
        free = shutil.disk_usage(existing_ancestor(self.path.parent)).free
        if free < nbytes + MIN_FREE_BYTES:
            raise FadeInputError(
                f"the disk holding {self.path.parent} has {_size(free)} free, the LoRA needs about {_size(nbytes)}; "
                f"free some space or choose another {self.folder_setting}"
            )

    def release(self) -> None:
        if self.owned:
            self.marker.unlink(missing_ok=True)
            self.owned = False

    def __enter__(self) -> LoraOutput:
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    # -- writing ------------------------------------------------------------------------------------

    def write(self, write: Callable[[Path], None], status: str = "complete") -> Path:
        """Writes the result through ``write(temporary_path)``: a complete run onto the reserved
        name, another status onto ``<name>-<status>`` (numbered ``-2``, ``-3``, ... rather than
        replacing an earlier one). When that fails, the result goes to the temporary folder and a
        :class:`FadeExportError` says where."""
        try:
            if status == "complete":
                return atomic_write(self.path, write, replace=self.overwrite)
            return self._write_new_variant(write, status)
        except OSError as error:
            raise self._rescue(write, status, error) from None

    def _write_new_variant(self, write: Callable[[Path], None], status: str) -> Path:
        for count in range(1, 100):
            target = self.variant(status if count == 1 else f"{status}-{count}")
            try:
                return atomic_write(target, write, replace=False)
            except FileExistsError:
                continue
        raise FileExistsError(f"{self.variant(status)} and 98 numbered copies exist")

    def _rescue(self, write: Callable[[Path], None], status: str, error: OSError) -> FadeExportError:
        reason = f"{error.strerror or error}" + (f": {error.filename}" if error.filename else "")
        what = "the trained LoRA" if status == "complete" else f"the {status} run's LoRA"
        stamp = time.strftime("%Y%m%d-%H%M%S")
        fallback = Path(tempfile.gettempdir()) / f"fade-rescued-{self.path.stem[:80]}-{stamp}-{os.getpid()}{SUFFIX}"
        try:
            atomic_write(fallback, write, replace=False)
        except OSError as second:
            return FadeExportError(
                f"could not write {what} to {self.path} ({reason}), nor to {fallback.parent} ({second.strerror or second}); "
                f"nothing was saved: free some space or choose another {self.folder_setting}, then run again",
                saved=None,
            )
        return FadeExportError(
            f"could not write {what} to {self.path} ({reason}); it is kept in {fallback}: move it where you want it, "
            f"and free some space or choose another {self.folder_setting} for the next run",
            saved=fallback,
        )

    # -- reservation --------------------------------------------------------------------------------

    def _taken(self, ignore_marker: bool = False) -> bool:
        paths = [self.path, *(self.variant(status) for status in STATUSES)]
        if any(p.exists() for p in paths):
            return True
        return not ignore_marker and _live_marker(self.marker) is not None

    def _reserve(self) -> bool:
        """Creates the marker; False when another run holds it."""
        for _ in range(2):
            try:
                handle = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if _live_marker(self.marker) is not None:
                    return False
                self.marker.unlink(missing_ok=True)  # its run has ended
                continue
            except OSError as error:
                raise _unwritable(self.path.parent, self.folder_setting, error) from None
            with os.fdopen(handle, "w") as marker:
                marker.write(owner_tag())
            self.owned = True
            return True
        return False

    def _reserve_or_explain(self) -> None:
        _prepare(self.path.parent, self.folder_setting)
        if not self._reserve():
            owner = _live_marker(self.marker) or "another run"
            raise FadeInputError(
                f"another run (process {owner.partition('-')[2] or '?'}) is writing {self.path} right now; "
                f"wait for it to finish or choose another {self.name_setting}"
            )


def _marker(path: Path) -> Path:
    return path.with_name(f".{path.name}.reserved")


def _live_marker(marker: Path) -> str | None:
    """The owner tag of a marker whose run is still alive; None if there is none or it is stale."""
    try:
        owner = marker.read_text().strip()
    except FileNotFoundError:
        return None
    except OSError:
        return "unknown"
    if owner and owner_is_gone(owner):
        return None
    return owner or "unknown"


def check_folder(folder: Path, setting: str) -> None:
    """The folder, or the nearest existing folder above it, can hold a new file."""
    require_short_names(folder.resolve(), setting=setting)
    ancestor = existing_ancestor(folder)
    if not ancestor.is_dir():
        raise FadeInputError(f"{ancestor} is a file, not a folder; choose another {setting}")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise FadeInputError(f"{ancestor} is not writable (permission denied or a read-only disk); choose another {setting}")
    free = shutil.disk_usage(ancestor).free
    if free < MIN_FREE_BYTES:
        raise FadeInputError(f"the disk holding {ancestor} is full ({_size(free)} free); free some space or choose another {setting}")


def _prepare(folder: Path, setting: str) -> None:
    """Creates the folder and clears what ended runs left there."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise _unwritable(folder, setting, error) from None
    remove_stale_partials(folder)
    try:
        markers = [m for m in folder.iterdir() if m.name.startswith(".") and m.name.endswith(".reserved")]
    except OSError:
        markers = []
    for marker in markers:
        if _live_marker(marker) is None:
            marker.unlink(missing_ok=True)


def _unwritable(folder: Path, setting: str, error: OSError) -> FadeInputError:
    return FadeInputError(f"cannot write in {folder} ({error.strerror or error}); choose another {setting}")


def _size(nbytes: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if nbytes < 1000 or unit == "GB":
            return f"{nbytes:.0f} {unit}" if unit == "bytes" else f"{nbytes:.1f} {unit}"
        nbytes /= 1000
    return f"{nbytes:.1f} TB"
