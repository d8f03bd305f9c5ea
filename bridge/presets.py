"""Quality presets: the seed's `high` and `ultra`, plus a fast `draft` for blocking out."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Preset:
    name: str
    width: int
    height: int
    steps: int
    cfg: float
    sampler: str
    scheduler: str
    frames: int  # default shot length when a shot gives no duration
    fps: float
    lora_scale: float  # multiplies character LoRA strengths
    context: int  # temporal context window (FramePack latent_window_size)
    denoise: float = 1.0


DRAFT = Preset("draft", 512, 384, 12, 6.0, "euler", "normal", 48, 24.0, 1.0, 9)
HIGH = Preset("high", 704, 544, 28, 7.0, "dpmpp_2m", "karras", 120, 24.0, 1.0, 9)
ULTRA = Preset("ultra", 768, 768, 35, 8.0, "dpmpp_2m", "karras", 120, 24.0, 1.2, 13)

PRESETS: dict[str, Preset] = {p.name: p for p in (DRAFT, HIGH, ULTRA)}
DEFAULT_PRESET = "high"
