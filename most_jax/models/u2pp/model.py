"""The U2++ model: Conformer encoder, CTC head and bidirectional attention decoder (WeNet's ASRModel).

Parameter tree (WeNet's state_dict names, see checkpoint/wenet.py): encoder/..., decoder/
{left,right}_decoder/..., ctc/ctc_lo/{kernel,bias}. Token ids: 0 is the CTC blank, vocab_size - 1
is sos = eos.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from most_jax.config import U2ppConfig
from most_jax.models.u2pp.decoder import BiTransformerDecoder
from most_jax.models.u2pp.encoder import ConformerEncoder
from most_jax.nn.mlp import Linear

BLANK_ID = 0


class CTC(nnx.Module):
    """WeNet's CTC module: ctc_lo Linear(d, V) with bias; its log-softmax gives the frame posteriors."""

    def __init__(self, d: int, vocab: int, *, init_std: float, param_dtype: str, dtype: str, rngs: nnx.Rngs):
        self.ctc_lo = Linear(d, vocab, ("embed", "vocab"), rngs=rngs, std=init_std, param_dtype=param_dtype,
                             dtype=dtype, bias=True)

    def __call__(self, encoder_out_BTD: jax.Array) -> jax.Array:
        """Logits [B, T, V] in float32."""
        return self.ctc_lo(encoder_out_BTD).astype(jnp.float32)


class U2pp(nnx.Module):
    def __init__(self, cfg: U2ppConfig, *, rngs: nnx.Rngs):
        cfg.validate()
        self.cfg = cfg
        self.encoder = ConformerEncoder(cfg, rngs=rngs)
        self.decoder = BiTransformerDecoder(cfg, rngs=rngs)
        self.ctc = CTC(cfg.encoder.output_size, cfg.vocab_size, init_std=cfg.init_std, param_dtype=cfg.param_dtype,
                       dtype=cfg.dtype, rngs=rngs)

    @property
    def sos(self) -> int:
        return self.cfg.vocab_size - 1

    @property
    def eos(self) -> int:
        return self.cfg.vocab_size - 1

    def encode(self, feats_BUI: jax.Array, feats_lengths_B: jax.Array, *, chunk_size: int = -1,
               num_left_chunks: int = -1, dropout_rng: jax.Array | None = None, chunk_rng: jax.Array | None = None):
        """(encoder_out [B, T, D], valid mask [B, T], MoE stats): chunk_size -1 is full context, N > 0
        attends chunk by chunk (the chunk-masked full forward, equal to streaming); 0 is training's
        chunk as the config says (WeNet's dynamic chunk, drawn with chunk_rng)."""
        return self.encoder.encode(feats_BUI, feats_lengths_B, chunk_size=chunk_size, num_left_chunks=num_left_chunks,
                                   dropout_rng=dropout_rng, chunk_rng=chunk_rng)

    def ctc_log_probs(self, encoder_out_BTD: jax.Array) -> jax.Array:
        return jax.nn.log_softmax(self.ctc(encoder_out_BTD), axis=-1)
