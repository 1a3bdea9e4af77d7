"""Build Prompt Set: the paired prompts P_c and P_notc (paper section 4.1)."""

from __future__ import annotations

from comfy_api.latest import io, ui

from ..fade_core.prompts import CATEGORIES, build_prompt_set, parse_synonyms
from .sockets import CATEGORY, PromptSetType

REMOVE_WORD = "(remove)"


def parse_concepts(text: str) -> list[str]:
    """One concept per line, or several separated by commas."""
    return [part.strip() for line in text.splitlines() for part in line.split(",") if part.strip()]


def parse_neutral(text: str) -> list[str] | None:
    words = [w.strip() for w in text.split(",") if w.strip()]
    if not words:
        return None
    return ["" if w == REMOVE_WORD else w for w in words]


class FADEBuildPromptSet(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="FADEBuildPromptSet",
            display_name="FADE Build Prompt Set",
            category=CATEGORY,
            description=(
                "Pairs of prompts for the eraser: each concept prompt (templates x concept and its synonyms) "
                "and the same prompt with the concept replaced by a neutral word or removed."
            ),
            inputs=[
                io.String.Input("concepts", multiline=True, default="airplane",
                                tooltip="What to erase: one concept per line (or separated by commas). Several concepts train one eraser."),
                io.Combo.Input("category", options=list(CATEGORIES), default="object",
                               tooltip="Chooses the prompt templates and default neutral words: object, celebrity, explicit or style."),
                io.String.Input("synonyms", multiline=True, default="",
                                tooltip="Other names of the concept, as 'concept: name, name' lines; they are erased too."),
                io.String.Input("neutral", default="",
                                tooltip=f"Comma-separated words that replace the concept in the neutral prompts; empty uses the category's defaults; {REMOVE_WORD} drops the concept word."),
                io.Int.Input("prompts_per_concept", default=48, min=2, max=4096,
                             tooltip="Prompt pairs per concept; a quarter of them are held out to judge when to stop."),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1, tooltip="Which templates and words are drawn."),
            ],
            outputs=[
                PromptSetType.Output(display_name="prompt_set"),
                io.String.Output(display_name="preview"),
            ],
        )

    @classmethod
    def execute(cls, concepts, category, synonyms, neutral, prompts_per_concept, seed) -> io.NodeOutput:
        names = parse_concepts(concepts)
        prompt_set = build_prompt_set(
            names, category,
            synonyms=parse_synonyms(synonyms, names),
            neutral=parse_neutral(neutral),
            num_prompts=prompts_per_concept,
            seed=seed,
        )
        preview = prompt_set.preview()
        return io.NodeOutput(prompt_set, preview, ui=ui.PreviewText(preview))
