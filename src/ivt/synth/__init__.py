"""SynthPedes: a procedural pedestrian dataset with CUHK-PEDES-style captions, for CPU demos and tests."""
from __future__ import annotations

from ivt.synth.generate import generate_synthpedes, write_preview

__all__ = ["generate_synthpedes", "write_preview"]
