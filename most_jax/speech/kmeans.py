"""Mini-batch k-means in JAX (Sculley 2010), deterministic by seed, for speech-unit codebooks.

Each step assigns a batch to its nearest centroids and moves every centroid to the running mean of
all points it has been assigned so far (per-centroid learning rate 1 / count). Centroids that won no
point during an epoch are re-seeded on random data points, so the codebook does not keep dead
entries (except after the last epoch). Initialisation: greedy k-means++ (D^2 sampling) on a subsample, or k distinct random points.

Array names (most_jax/AXES.md): N points (frames), I feature dims, V codebook entries (centroids:
the unit vocabulary).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

INITS = ("k-means++", "random")


@dataclasses.dataclass(frozen=True)
class KMeansOptions:
    num_clusters: int = 500
    batch_size: int = 4096
    epochs: int = 10
    init: str = "k-means++"
    # k-means++ runs on at most this many points (it is sequential in the number of clusters).
    init_sample: int = 20000
    seed: int = 0

    def validate(self, num_points: int) -> None:
        if self.init not in INITS:
            raise ValueError(f"KMeansOptions.init must be one of {INITS}, got {self.init!r}")
        for name in ("num_clusters", "batch_size", "epochs", "init_sample"):
            if getattr(self, name) <= 0:
                raise ValueError(f"KMeansOptions.{name} must be positive, got {getattr(self, name)}")
        if num_points < self.num_clusters:
            raise ValueError(f"k-means needs at least num_clusters={self.num_clusters} points, got {num_points}; "
                             "give it more audio or lower K")


def _sq_distances(x_NI: jax.Array, c_VI: jax.Array) -> jax.Array:
    """Squared Euclidean distances [N, V] (clamped at 0 against rounding)."""
    cross_NV = x_NI @ c_VI.T
    d2_NV = (x_NI * x_NI).sum(-1, keepdims=True) - 2.0 * cross_NV + (c_VI * c_VI).sum(-1)[None, :]
    return jnp.maximum(d2_NV, 0.0)


@jax.jit
def assign(x_NI: jax.Array, c_VI: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(nearest centroid id [N] int32, its squared distance [N])."""
    d2_NV = _sq_distances(x_NI, c_VI)
    ids_N = jnp.argmin(d2_NV, axis=-1).astype(jnp.int32)
    return ids_N, jnp.take_along_axis(d2_NV, ids_N[:, None], axis=-1)[:, 0]


@functools.partial(jax.jit, static_argnums=2)
def _kmeans_plus_plus(key: jax.Array, x_NI: jax.Array, num_clusters: int) -> jax.Array:
    """Greedy k-means++: each step draws 2 + ln(K) candidates by D^2 sampling and keeps the one that
    lowers the total squared distance most (plain k-means++ often seeds two centroids in one cluster)."""
    num_candidates = 2 + int(np.log(num_clusters))
    key, first = jax.random.split(key)
    c0_I = x_NI[jax.random.randint(first, (), 0, x_NI.shape[0])]
    c_VI = jnp.zeros((num_clusters, x_NI.shape[1]), x_NI.dtype).at[0].set(c0_I)
    d2_N = ((x_NI - c0_I[None, :]) ** 2).sum(-1)

    def body(i, carry):
        c_VI, d2_N, key = carry
        key, sub = jax.random.split(key)
        # The tiny floor keeps the distribution valid when every point sits on a centroid.
        picks = jax.random.choice(sub, x_NI.shape[0], (num_candidates,), p=(d2_N + 1e-12) / (d2_N + 1e-12).sum())
        new_d2 = jnp.minimum(d2_N[None, :], _sq_distances(x_NI[picks], x_NI))  # [candidates, N]
        best = jnp.argmin(new_d2.sum(-1))
        return c_VI.at[i].set(x_NI[picks[best]]), new_d2[best], key

    c_VI, _, _ = jax.lax.fori_loop(1, num_clusters, body, (c_VI, d2_N, key))
    return c_VI


@jax.jit
def _epoch(c_VI, counts_V, batches, key, reseed):
    """One pass over `batches` [num_batches, N, A]; returns centroids, counts, mean batch inertia and
    the number of re-seeded centroids."""
    num_clusters = c_VI.shape[0]

    def step(carry, x_NI):
        c_VI, counts_V, wins_V = carry
        ids_N, d2_N = assign(x_NI, c_VI)
        batch_counts_V = jnp.zeros(num_clusters, counts_V.dtype).at[ids_N].add(1.0)
        sums_VI = jax.ops.segment_sum(x_NI, ids_N, num_segments=num_clusters)
        counts_V = counts_V + batch_counts_V
        c_VI = c_VI + (sums_VI - batch_counts_V[:, None] * c_VI) / jnp.maximum(counts_V, 1.0)[:, None]
        return (c_VI, counts_V, wins_V + batch_counts_V), d2_N.mean()

    (c_VI, counts_V, wins_V), inertia = jax.lax.scan(step, (c_VI, counts_V, jnp.zeros_like(counts_V)), batches)
    # Re-seed centroids that won nothing this epoch on random points of the data.
    flat_NI = batches.reshape(-1, batches.shape[-1])
    picks_V = jax.random.randint(key, (num_clusters,), 0, flat_NI.shape[0])
    dead_V = (wins_V == 0) & reseed
    c_VI = jnp.where(dead_V[:, None], flat_NI[picks_V], c_VI)
    counts_V = jnp.where(dead_V, 0.0, counts_V)
    return c_VI, counts_V, inertia.mean(), dead_V.sum()


def initial_centroids(data_NI: np.ndarray, options: KMeansOptions) -> np.ndarray:
    """The k-means++ or random initial codebook [V, I] (what `fit` starts from)."""
    options.validate(len(data_NI))
    key = jax.random.key(options.seed)
    sample_key, init_key = jax.random.split(key)
    x_NI = jnp.asarray(data_NI, jnp.float32)
    if options.init == "random":
        picks = jax.random.choice(init_key, x_NI.shape[0], (options.num_clusters,), replace=False)
        return np.array(x_NI[picks])
    if x_NI.shape[0] > options.init_sample:
        x_NI = x_NI[jax.random.choice(sample_key, x_NI.shape[0], (options.init_sample,), replace=False)]
    return np.array(_kmeans_plus_plus(init_key, x_NI, options.num_clusters))


def fit(data_NI: np.ndarray, options: KMeansOptions = KMeansOptions(),
        progress: Callable[[int, float, int], None] | None = None) -> np.ndarray:
    """Fits a codebook [V, I] float32 to `data_NI`; `progress(epoch, mean batch inertia, reseeded)`."""
    data_NI = np.asarray(data_NI, np.float32)
    if data_NI.ndim != 2:
        raise ValueError(f"k-means data must be [points, dims], got shape {data_NI.shape}")
    c_VI = jnp.asarray(initial_centroids(data_NI, options))
    counts_V = jnp.zeros(options.num_clusters, jnp.float32)
    x_NI = jnp.asarray(data_NI)
    batch = min(options.batch_size, x_NI.shape[0])
    num_batches = x_NI.shape[0] // batch
    key = jax.random.fold_in(jax.random.key(options.seed), 1)
    for epoch in range(options.epochs):
        key, perm_key, reseed_key = jax.random.split(key, 3)
        order = jax.random.permutation(perm_key, x_NI.shape[0])[:num_batches * batch]
        batches = x_NI[order].reshape(num_batches, batch, -1)
        # No re-seeding after the last epoch: a re-seeded centroid would go out unrefined.
        last = epoch == options.epochs - 1
        c_VI, counts_V, inertia, reseeded = _epoch(c_VI, counts_V, batches, reseed_key, jnp.asarray(not last))
        if progress is not None:
            progress(epoch, float(inertia), int(reseeded))
    return np.array(c_VI)


def inertia(data_NI: np.ndarray, c_VI: np.ndarray) -> float:
    """Mean squared distance from each point to its nearest centroid."""
    _, d2_N = assign(jnp.asarray(data_NI, jnp.float32), jnp.asarray(c_VI, jnp.float32))
    return float(d2_N.mean())
