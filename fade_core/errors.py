"""Errors that the user can act on. Their messages are one line naming the problem and the fix."""

from __future__ import annotations

from pathlib import Path


class FadeInputError(ValueError):
    """Bad input: an empty concept, an unknown category, a path outside its folder, a broken file, ..."""


class FadeTrainingError(RuntimeError):
    """Training went wrong (a non-finite loss, say). ``saved`` is the file holding the last
    validated LoRA, or None when there was none yet."""

    def __init__(self, message: str, saved: Path | None = None) -> None:
        super().__init__(message)
        self.saved = saved


class FadeExportError(OSError):
    """The LoRA could not be written where asked; ``saved`` is where it went instead (or None)."""

    def __init__(self, message: str, saved: Path | None = None) -> None:
        super().__init__(message)
        self.saved = saved

    def __str__(self) -> str:
        return self.args[0]


class FadeInterrupted(Exception):
    """The user stopped a run; ``saved`` holds the LoRA trained so far, or None when the LoRA had
    not moved yet. Raised from the host's own interrupt, which callers may re-raise."""

    def __init__(self, message: str, saved: Path | None = None) -> None:
        super().__init__(message)
        self.saved = saved
