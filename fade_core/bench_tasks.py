"""What the benchmark runs: its methods and tasks, importable without torch so that the command
line checks a ``bench`` request before any work (the benchmark itself is :mod:`fade_core.bench`)."""

METHODS = ("fade", "esd", "uce", "fade-no-adversary", "fade-no-preservation", "fade-no-saliency")
DEFAULT_TASKS = ("three", "five", "eight", "bold", "inverted", "one+four+seven")
ABLATIONS_ON = ("three", "five", "eight")  # the ablations run on the single-digit tasks


def task_concepts(task: str) -> list[str]:
    """A task's concepts: concepts erased together are joined by +."""
    return task.split("+")
