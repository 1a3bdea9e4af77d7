"""Safe file handling: atomic writes, names that stay inside their folder, safetensors only."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .errors import FadeInputError


def atomic_write(path: str | Path, write) -> Path:
    """Calls ``write(temporary_path)`` and moves the result onto ``path`` only if it succeeded."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(handle)
    try:
        write(Path(temporary))
        # mkstemp makes the file private; give it the permissions an ordinary new file would get.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def save_safetensors(tensors: Mapping[str, torch.Tensor], path: str | Path, metadata: Mapping[str, str] | None = None) -> Path:
    contiguous = {key: value.detach().contiguous() for key, value in tensors.items()}
    return atomic_write(path, lambda temporary: save_file(contiguous, str(temporary), metadata=dict(metadata or {})))


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
    if not path.is_file():
        raise FadeInputError(f"no such file: {path}")
    return path


def load_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    return load_file(str(checked_safetensors_path(path)))


def read_safetensors_metadata(path: str | Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(checked_safetensors_path(path)), framework="pt") as handle:
        return dict(handle.metadata() or {})


def path_inside(folder: str | Path, name: str, suffix: str = ".safetensors") -> Path:
    """``folder/name`` with ``suffix``, refusing any name that would land outside ``folder``."""
    if not name or not name.strip():
        raise FadeInputError("the file name is empty; give a name such as 'erased-airplane'")
    folder = Path(folder).resolve()
    candidate = Path(name)
    if candidate.suffix.lower() != suffix:
        candidate = candidate.with_name(candidate.name + suffix)
    target = (folder / candidate).resolve()
    if candidate.is_absolute() or not target.is_relative_to(folder):
        raise FadeInputError(
            f"the file name {name!r} points outside {folder}; use a plain name or a sub-folder inside it"
        )
    return target
