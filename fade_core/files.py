"""Safe file handling: atomic writes, names that stay inside their folder, safetensors only.

Every safetensors file is read through :func:`load_safetensors` (or :func:`read_safetensors_metadata`
for its header alone): both check the file before safetensors parses it and name the file and what
is wrong with it. Importing this module does not import torch; loading does.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import struct
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import FadeInputError

try:
    import fcntl
except ImportError:  # Windows: update_json takes no lock; its read just before the write keeps the window small
    fcntl = None

if TYPE_CHECKING:
    import torch

SAFETENSORS_HEADER_LIMIT = 100 * 1024 * 1024  # safetensors refuses larger headers
DEFAULT_NAME_MAX = 255
# torch.save writes a zip archive (PK..) or, in its legacy format, a pickle (protocol 2 to 5).
PICKLE_STARTS = {b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05"}


# -- who owns a temporary file ------------------------------------------------------------------


def owner_tag() -> str:
    """``<host>-<pid>`` of this process (the host as a short hash), written into the names of its
    temporary files so that a later run can tell its own stale leftovers from a live run's files."""
    host = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]
    return f"{host}-{os.getpid()}"


def owner_is_gone(tag: str) -> bool:
    """Whether the process that wrote ``tag`` has certainly ended: on this host, and no such pid.
    Anything unsure (another host, no way to tell) counts as alive."""
    host, _, pid = tag.partition("-")
    if host != owner_tag().partition("-")[0] or not pid.isdigit():
        return False
    if os.name == "nt":  # os.kill would terminate the process there; psutil asks without harm
        try:
            import psutil
        except ImportError:
            return False
        return not psutil.pid_exists(int(pid))
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:  # it exists but belongs to someone else
        return False
    return False


PARTIAL = re.compile(r"^\.fade-(?P<owner>[0-9a-f]{8}-\d+)-[^.]*\.partial$")


def remove_stale_partials(folder: str | Path) -> list[Path]:
    """Deletes the temporary files that runs which have ended left in ``folder`` (a kill during a
    write leaves one); another live run's files stay."""
    removed = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = PARTIAL.match(entry.name)
        if match and owner_is_gone(match["owner"]):
            try:
                entry.unlink()
                removed.append(entry)
            except OSError:
                pass
    return removed


# -- writing ------------------------------------------------------------------------------------


def atomic_write(path: str | Path, write: Callable[[Path], None], *, replace: bool = True) -> Path:
    """Calls ``write(temporary_path)`` and moves the result onto ``path`` only if it succeeded.
    With ``replace=False`` an existing file at ``path`` is never replaced (FileExistsError)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".fade-{owner_tag()}-", suffix=".partial", dir=path.parent)
    os.close(handle)
    try:
        write(Path(temporary))
        # mkstemp makes the file private; give it the permissions an ordinary new file would get.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)
        if not replace:
            # Claims the name atomically: of two runs publishing the same name, one gets an error.
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def update_json(path: str | Path, change: Callable[[dict], dict]) -> dict:
    """Reads the JSON object at ``path`` ({} if there is none), writes ``change(it)`` back atomically
    and returns it. Two processes updating the same file take turns (a lock beside it, where the
    system has ``fcntl``), so that neither drops what the other wrote since it started."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        if fcntl is not None:
            fcntl.flock(lock, fcntl.LOCK_EX)
        current = json.loads(path.read_text()) if path.is_file() else {}
        updated = change(current)
        atomic_write(path, lambda temporary: temporary.write_text(json.dumps(updated, indent=1) + "\n"))
    return updated


def save_safetensors(
    tensors: Mapping[str, torch.Tensor], path: str | Path, metadata: Mapping[str, str] | None = None, *, replace: bool = True
) -> Path:
    from safetensors.torch import save_file

    contiguous = {key: value.detach().contiguous() for key, value in tensors.items()}
    return atomic_write(path, lambda temporary: save_file(contiguous, str(temporary), metadata=dict(metadata or {})), replace=replace)


# -- reading ------------------------------------------------------------------------------------


def require_safetensors_name(path: str | Path) -> None:
    """Only safetensors are ever loaded: pickled files can run code."""
    if Path(path).suffix.lower() != ".safetensors":
        raise FadeInputError(
            f"{Path(path).name} is not a .safetensors file; only safetensors are loaded (pickled .pt/.ckpt/.bin files can run code)"
        )


def checked_safetensors_path(path: str | Path) -> Path:
    """The path, if it names an existing .safetensors file; a clear error otherwise."""
    path = Path(path)
    require_safetensors_name(path)
    if path.is_dir():
        raise FadeInputError(f"{path} is a folder; give a .safetensors file")
    if not path.is_file():
        raise FadeInputError(f"no such file: {path}; check the name and the folder")
    return path


def _again(path: Path) -> str:
    return f"write or download {path.name} again, or choose another file"


def read_safetensors_header(path: str | Path) -> dict:
    """The parsed header of a safetensors file, after checking that the file is one, complete."""
    path = checked_safetensors_path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            start = handle.read(8)
            if size == 0:
                raise FadeInputError(f"{path} is empty (0 bytes): it was never written completely; {_again(path)}")
            if start.startswith(b"PK\x03\x04") or start[:2] in PICKLE_STARTS:
                raise FadeInputError(
                    f"{path} is a pickled PyTorch file renamed to .safetensors; it is not loaded, because unpickling "
                    "can run code; convert it to safetensors with a tool you trust, or use a .safetensors original"
                )
            if size < 8:
                raise FadeInputError(f"{path} is truncated ({size} bytes, shorter than any safetensors header); {_again(path)}")
            (length,) = struct.unpack("<Q", start)
            if length > SAFETENSORS_HEADER_LIMIT:
                raise FadeInputError(f"{path} is not a safetensors file (it does not start with a safetensors header); {_again(path)}")
            if length > size - 8:
                raise FadeInputError(
                    f"{path} is truncated: its header needs {length} bytes but only {size - 8} follow; {_again(path)}"
                )
            raw = handle.read(length)
    except OSError as error:
        raise FadeInputError(f"{path} cannot be read ({error.strerror or error}); check its permissions, or copy it anew") from None
    try:
        header = json.loads(raw.decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError("not a JSON object")
        ends = [entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"]
    except (UnicodeDecodeError, ValueError, KeyError, IndexError, TypeError):
        raise FadeInputError(f"{path} is not a safetensors file (its header is not a safetensors JSON header); {_again(path)}") from None
    have = size - 8 - length
    if ends and max(ends) > have:
        raise FadeInputError(f"{path} is truncated: its tensors need {max(ends)} bytes but the file holds {have}; {_again(path)}")
    return header


def read_safetensors_metadata(path: str | Path) -> dict[str, str]:
    metadata = read_safetensors_header(path).get("__metadata__") or {}
    return {str(key): str(value) for key, value in metadata.items()}


def load_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of a checked safetensors file; refuses one with NaN or infinite values."""
    read_safetensors_header(path)  # before importing torch: a broken file is named at once
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        message = " ".join(str(error).split())
        raise FadeInputError(f"{path} is not a readable safetensors file ({message}); {_again(Path(path))}") from None
    broken = [key for key, value in tensors.items() if value.is_floating_point() and not torch.isfinite(value).all()]
    if broken:
        raise FadeInputError(
            f"{path} holds NaN or infinite values in {len(broken)} of {len(tensors)} tensors (first: {broken[0]}); "
            f"it comes from a diverged training or is damaged; use another file"
        )
    return tensors


# -- names ----------------------------------------------------------------------------------------


def existing_ancestor(path: Path) -> Path:
    """The nearest folder at or above ``path`` that exists (where a new file or folder would go)."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def name_limit(folder: Path) -> int:
    """The longest file name the file system holding ``folder`` allows."""
    try:
        return os.pathconf(existing_ancestor(folder), "PC_NAME_MAX")
    except (AttributeError, OSError, ValueError):
        return DEFAULT_NAME_MAX


def require_short_names(path: Path, room: int = 0, setting: str = "name") -> None:
    """Every part of ``path`` fits the file system's name limit, with ``room`` characters to spare
    on the last part (for a suffix added later); ``setting`` says where the user gave the name."""
    parts = path.parts
    limit = name_limit(path.parent)
    for index, part in enumerate(parts):
        extra = room if index == len(parts) - 1 else 0
        if len(part.encode()) + extra > limit:
            shown = part if len(part) <= 40 else part[:20] + "..." + part[-12:]
            spare = f", {room} of them kept for a suffix such as '-interrupted'" if extra else ""
            raise FadeInputError(
                f"the name {shown!r} is {len(part)} characters long; this file system allows {limit}{spare}; use a shorter {setting}"
            )


def path_inside(folder: str | Path, name: str, suffix: str = ".safetensors", setting: str = "name") -> Path:
    """``folder/name`` with ``suffix``, refusing any name that would land outside ``folder`` (or
    too long for its file system); ``setting`` says where the user gave the name."""
    if not name or not name.strip():
        raise FadeInputError("the file name is empty; give a name such as 'erased-airplane'")
    folder = Path(folder).resolve()
    candidate = Path(name)
    if candidate.name in ("", ".", ".."):
        raise FadeInputError(f"the file name {name!r} names a folder, not a file; give a file name such as 'erased-airplane'")
    if candidate.suffix.lower() != suffix:
        candidate = candidate.with_name(candidate.name + suffix)
    target = (folder / candidate).resolve()
    if candidate.is_absolute() or not target.is_relative_to(folder):
        raise FadeInputError(
            f"the file name {name!r} points outside {folder}; use a plain name or a sub-folder inside it"
        )
    require_short_names(target, setting=setting)
    return target


def path_within(folder: str | Path, name: str) -> Path:
    """``folder/name`` for reading a file chosen from a folder's list: the name must stay inside the
    folder as written (no ``..``, not absolute), but a link inside the folder may lead anywhere, as
    the host that listed it follows links too."""
    if not name or Path(name).is_absolute() or ".." in Path(name.replace("\\", "/")).parts:
        raise FadeInputError(f"the file name {name!r} points outside {folder}; choose a file from the list")
    return Path(os.path.abspath(Path(folder) / name))
