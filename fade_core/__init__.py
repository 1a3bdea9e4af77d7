"""FADE, adversarial concept erasure for text-to-image models, independent of any host UI.

The method lives in :mod:`fade_core.fade` (Algorithm 1 of the paper); the host interface in
:mod:`fade_core.adapter`. Nothing here imports ComfyUI.
"""

__version__ = "0.1.0"
