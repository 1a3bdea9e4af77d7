"""FADE for ComfyUI: adversarial concept erasure, exported as a standard LoRA.

ComfyUI imports this file from custom_nodes/. The method itself lives in ``fade_core`` and never
imports ComfyUI; ``nodes`` translates ComfyUI's types into it. Importing this package where
ComfyUI is absent (tests, other tools) defines no nodes and raises nothing.
"""

WEB_DIRECTORY = "./web"

try:
    from comfy_api.latest import ComfyExtension  # noqa: F401  (present only inside ComfyUI)
except ImportError:
    pass
else:
    from .nodes import comfy_entrypoint  # noqa: F401

__all__ = ["WEB_DIRECTORY"]
