"""Erasure methods that FADE is compared with, behind the same adapter interface and LoRA budget."""

from .esd import EsdConfig, EsdResult, erase_esd, esd_target
from .uce import UceConfig, UceResult, applied, delta_as_lora, edit_uce

__all__ = ["EsdConfig", "EsdResult", "UceConfig", "UceResult", "applied", "delta_as_lora", "edit_uce", "erase_esd", "esd_target"]
