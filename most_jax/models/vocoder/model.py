"""The vocoder as one module: the generator side (what synthesis needs) and the discriminators
(what its GAN training needs). The trainer updates them as two phases (models/vocoder/family.py)."""

from __future__ import annotations

from flax import nnx

from most_jax.config import VocoderConfig
from most_jax.models.vocoder.discriminators import Discriminators
from most_jax.models.vocoder.generator import UnitGenerator

GENERATOR, DISCRIMINATORS = "generator", "discriminators"


class Vocoder(nnx.Module):
    def __init__(self, cfg: VocoderConfig, *, rngs: nnx.Rngs):
        self.generator = UnitGenerator(cfg, rngs=rngs)
        self.discriminators = Discriminators(cfg, rngs=rngs)
