"""The pack's own socket types. Their values are fade_core objects; they travel between FADE nodes only."""

from comfy_api.latest import io

PromptSetType = io.Custom("FADE_PROMPT_SET")
SaliencyType = io.Custom("FADE_SALIENCY")

CATEGORY = "FADE"
