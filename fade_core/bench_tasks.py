"""What the benchmark runs: its methods and tasks, importable without torch so that the command
line checks a ``bench`` request before any work (the benchmark itself is :mod:`fade_core.bench`).

A method is a name from :data:`METHODS`, optionally with settings after ``@`` that replace its
defaults: ``esd@steps=400``, ``fade@steps=300:learning_rate=0.002``. The default run adds, on
:data:`TUNING_TASK`, the tuning variants of :data:`TUNING` (so that BENCHMARKS.md shows what each
method's chosen settings were compared with) and the reference of :data:`REFERENCES`.
"""

DEFAULT_METHODS = ("fade", "fade-robust", "esd", "uce", "fade-no-adversary", "fade-no-preservation", "fade-no-saliency")
# The reference every eraser is compared with: the base model's recipe, retrained from
# scratch without the concept's images and captions (half an hour to an hour a job, so by default on the
# tuning task only). What an attack brings back from it, a model that never learned the concept,
# is how far that attack finds concepts rather than remnants of them.
REFERENCES = ("retrained",)
METHODS = DEFAULT_METHODS + REFERENCES
DEFAULT_TASKS = ("three", "five", "eight", "bold", "inverted", "one+four+seven")

TUNING_TASK = "eight"

# The same tuning budget for every method: its chosen settings and one alternative, both measured
# on the tuning task in every run of the benchmark; the chosen one is the method's plain name.
# fade-robust's alternative is its previous default (rounds of 10 attack steps, a batch of 12,
# preservation over the early half of the trajectory).
ROBUST_PREVIOUS = "robust_attack_steps=10:batch_size=12:t0_fraction=0.5"
TUNING = ("fade@steps=300", "esd@steps=400", "uce@preserve_weight=0.1", f"fade-robust@{ROBUST_PREVIOUS}")
# The default before that one (the neutral anchor, a bank moving at lr 0.01), which the token-space
# rows below were measured with.
ROBUST_EARLIER = f"{ROBUST_PREVIOUS}:robust_anchor_target=neutral:robust_attack_lr=0.01"

# Where FADE's LoRA goes, measured under the attacks on the tuning task in every run: all attention
# layers, the text encoder (the robust place against textual inversion in AdvUnlearn), and the
# text encoder with the cross-attention K/V. The default (K/V) is plain ``fade``; every module is
# ``fade-no-saliency``.
PLACEMENTS = ("fade@family=attention", "fade@family=text_encoder", "fade@family=cross_attention+text_encoder")

# The robust extension with its inner attack in token space (AdvUnlearn's setting: word embeddings
# read by the text encoder being trained), on the tuning task in every run: the LoRA on the text
# encoder alone (the AdvUnlearn-style baseline) and on every module and the text encoder; measured
# with the earlier default anchor and bank speed, which they name.
# Last, the current default with half its bank grown as word embeddings (the inversion attack's kind)
# and read by the frozen text encoder: better than the default on eight with training seed 0, not with
# seed 1 nor on three (benchmarks/notes.md).
ROBUST_PLACEMENTS = (
    f"fade-robust@robust_space=tokens:family=text_encoder:{ROBUST_EARLIER}",
    f"fade-robust@robust_space=tokens:family=all+text_encoder:{ROBUST_EARLIER}",
    "fade-robust@robust_space=context+tokens",
)


def task_concepts(task: str) -> list[str]:
    """A task's concepts: concepts erased together are joined by +."""
    return task.split("+")


def method_name(method: str) -> str:
    """The method without its settings: ``esd@steps=400`` -> ``esd``."""
    return method.split("@", 1)[0]


def method_settings(method: str) -> dict[str, int | float | str]:
    """The settings after ``@``, with numbers and true/false parsed: ``esd@steps=400`` -> ``{"steps": 400}``."""
    if "@" not in method:
        return {}
    settings = {}
    for item in method.split("@", 1)[1].split(":"):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"method {method!r}: settings are key=value pairs separated by ':', such as fade@steps=300:learning_rate=0.002")
        if value.strip().lower() in ("true", "false"):
            settings[key.strip()] = value.strip().lower() == "true"
            continue
        for kind in (int, float):
            try:
                settings[key.strip()] = kind(value)
                break
            except ValueError:
                continue
        else:
            settings[key.strip()] = value.strip()
    return settings

