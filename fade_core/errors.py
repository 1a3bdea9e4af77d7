"""Errors that the user can act on. Their messages name the problem and the fix."""


class FadeInputError(ValueError):
    """Bad input: an empty concept, an unknown category, a path outside its folder, ..."""


class FadeTrainingError(RuntimeError):
    """Training went wrong (a non-finite loss, say); the last good result is kept."""
