"""The HuBERT model: feature extractor -> feature projection -> (masking) -> encoder, and the
masked-prediction head when the config has clusters.

Parameter tree (transformers' HubertModel names, see checkpoint/hubert_hf.py): feature_extractor/
conv_layers/{i}/..., feature_projection/{layer_norm,projection}, masked_spec_embed [D], encoder/
{pos_conv_embed, layer_norm, layers}; with num_clusters > 0 also final_proj [D, final_dim] and
label_embeddings [num_clusters, final_dim].
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from most_jax.config import HubertConfig
from most_jax.models.hubert.encoder import Encoder
from most_jax.models.hubert.features import FeatureExtractor
from most_jax.nn.dropout import dropout, split_rng
from most_jax.nn.mlp import Linear
from most_jax.nn.norms import LayerNorm
from most_jax.nn.params import DTYPES, normal_param


class FeatureProjection(nnx.Module):
    def __init__(self, cfg: HubertConfig, *, rngs: nnx.Rngs):
        c = cfg.conv_dim[-1]
        if cfg.feat_proj_layer_norm:
            self.layer_norm = LayerNorm(c, eps=cfg.layer_norm_eps, param_dtype=cfg.param_dtype, name=None)
        self.projection = Linear(c, cfg.hidden_size, (None, "embed"), rngs=rngs, std=cfg.init_std,
                                 param_dtype=cfg.param_dtype, dtype=cfg.dtype, bias=True)
        self.dropout_rate = cfg.feat_proj_dropout

    def __call__(self, x_BTC: jax.Array, rng: jax.Array | None) -> jax.Array:
        if hasattr(self, "layer_norm"):
            x_BTC = self.layer_norm(x_BTC)
        return dropout(self.projection(x_BTC), self.dropout_rate, rng)


class Hubert(nnx.Module):
    def __init__(self, cfg: HubertConfig, *, rngs: nnx.Rngs):
        cfg.validate()
        self.cfg = cfg
        self.feature_extractor = FeatureExtractor(cfg, rngs=rngs)
        self.feature_projection = FeatureProjection(cfg, rngs=rngs)
        if cfg.masked_spec_embed:
            self.masked_spec_embed = nnx.Param(jax.random.uniform(rngs.params(), (cfg.hidden_size,), jnp.float32)
                                               .astype(DTYPES[cfg.param_dtype]), out_sharding=("embed",),
                                               eager_sharding=False)
        self.encoder = Encoder(cfg, rngs=rngs)
        if cfg.num_clusters:
            self.final_proj = Linear(cfg.hidden_size, cfg.final_dim, ("embed", None), rngs=rngs, std=cfg.init_std,
                                     param_dtype=cfg.param_dtype, dtype=cfg.dtype, bias=True)
            self.label_embeddings = normal_param(rngs, (cfg.num_clusters, cfg.final_dim), ("vocab", None), 1.0,
                                                 cfg.param_dtype)

    def __call__(self, wave_BS: jax.Array, lengths_B: jax.Array, *, mask_BT: jax.Array | None = None,
                 dropout_rng: jax.Array | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(hidden states [L + 1, B, T, D], final output [B, T, D], valid frames [B, T]) of waveforms
        [B, S] float (16 kHz, as the checkpoint was trained on) with `lengths_B` valid samples.

        mask_BT (bool) replaces those frames' projected features with masked_spec_embed (HuBERT's
        masked prediction); dropout_rng None is evaluation (no dropout anywhere)."""
        proj_rng, encoder_rng = split_rng(dropout_rng, 2)
        feats_BTC, valid_BT = self.feature_extractor(wave_BS.astype(DTYPES[self.cfg.dtype]), lengths_B)
        x_BTD = self.feature_projection(feats_BTC, proj_rng)
        if mask_BT is not None:
            if not hasattr(self, "masked_spec_embed"):
                raise ValueError("mask_BT given, but the model has no masked_spec_embed (model.masked_spec_embed)")
            x_BTD = jnp.where(mask_BT[:, :, None], self.masked_spec_embed[...].astype(x_BTD.dtype), x_BTD)
        hidden_LBTD, last_BTD = self.encoder(x_BTD, valid_BT, encoder_rng)
        return hidden_LBTD, last_BTD, valid_BT

    def cluster_logits(self, x_BTD: jax.Array) -> jax.Array:
        """Cosine similarity of final_proj(x) with every cluster embedding over logit_temp, float32
        [B, T, num_clusters] (fairseq's HuBERT logits)."""
        if not self.cfg.num_clusters:
            raise ValueError("the model has no masked-prediction head (model.num_clusters is 0)")
        p_BTF = self.final_proj(x_BTD).astype(jnp.float32)
        e_VF = self.label_embeddings[...].astype(jnp.float32)
        p_BTF = p_BTF / jnp.maximum(jnp.linalg.norm(p_BTF, axis=-1, keepdims=True), 1e-8)
        e_VF = e_VF / jnp.maximum(jnp.linalg.norm(e_VF, axis=-1, keepdims=True), 1e-8)
        return jnp.einsum("BTF,VF->BTV", p_BTF, e_VF) / self.cfg.logit_temp
