"""Mini-batch k-means in JAX (Sculley 2010), deterministic by seed, for speech-unit codebooks.

Each step assigns a batch to its nearest centroids and moves every centroid to the running mean of
all points it has been assigned so far (per-centroid learning rate 1 / count). Centroids that won no
point during an epoch are re-seeded on random data points, so the codebook does not keep dead
entries (except after the last epoch). Initialisation: greedy k-means++ (D^2 sampling) on a subsample, or k distinct random points.

Array names: N points (frames), A feature dims, U codebook entries (centroids).
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


def _sq_distances(x_NA: jax.Array, c_UA: jax.Array) -> jax.Array:
    """Squared Euclidean distances [N, U] (clamped at 0 against rounding)."""
    cross_NU = x_NA @ c_UA.T
    d2_NU = (x_NA * x_NA).sum(-1, keepdims=True) - 2.0 * cross_NU + (c_UA * c_UA).sum(-1)[None, :]
    return jnp.maximum(d2_NU, 0.0)


@jax.jit
def assign(x_NA: jax.Array, c_UA: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(nearest centroid id [N] int32, its squared distance [N])."""
    d2_NU = _sq_distances(x_NA, c_UA)
    ids_N = jnp.argmin(d2_NU, axis=-1).astype(jnp.int32)
    return ids_N, jnp.take_along_axis(d2_NU, ids_N[:, None], axis=-1)[:, 0]


@functools.partial(jax.jit, static_argnums=2)
def _kmeans_plus_plus(key: jax.Array, x_NA: jax.Array, num_clusters: int) -> jax.Array:
    """Greedy k-means++: each step draws 2 + ln(K) candidates by D^2 sampling and keeps the one that
    lowers the total squared distance most (plain k-means++ often seeds two centroids in one cluster)."""
    num_candidates = 2 + int(np.log(num_clusters))
    key, first = jax.random.split(key)
    c0_A = x_NA[jax.random.randint(first, (), 0, x_NA.shape[0])]
    c_UA = jnp.zeros((num_clusters, x_NA.shape[1]), x_NA.dtype).at[0].set(c0_A)
    d2_N = ((x_NA - c0_A[None, :]) ** 2).sum(-1)

    def body(i, carry):
        c_UA, d2_N, key = carry
        key, sub = jax.random.split(key)
        # The tiny floor keeps the distribution valid when every point sits on a centroid.
        picks = jax.random.choice(sub, x_NA.shape[0], (num_candidates,), p=(d2_N + 1e-12) / (d2_N + 1e-12).sum())
        new_d2 = jnp.minimum(d2_N[None, :], _sq_distances(x_NA[picks], x_NA))  # [candidates, N]
        best = jnp.argmin(new_d2.sum(-1))
        return c_UA.at[i].set(x_NA[picks[best]]), new_d2[best], key

    c_UA, _, _ = jax.lax.fori_loop(1, num_clusters, body, (c_UA, d2_N, key))
    return c_UA


@jax.jit
def _epoch(c_UA, counts_U, batches, key, reseed):
    """One pass over `batches` [num_batches, N, A]; returns centroids, counts, mean batch inertia and
    the number of re-seeded centroids."""
    num_clusters = c_UA.shape[0]

    def step(carry, x_NA):
        c_UA, counts_U, wins_U = carry
        ids_N, d2_N = assign(x_NA, c_UA)
        batch_counts_U = jnp.zeros(num_clusters, counts_U.dtype).at[ids_N].add(1.0)
        sums_UA = jax.ops.segment_sum(x_NA, ids_N, num_segments=num_clusters)
        counts_U = counts_U + batch_counts_U
        c_UA = c_UA + (sums_UA - batch_counts_U[:, None] * c_UA) / jnp.maximum(counts_U, 1.0)[:, None]
        return (c_UA, counts_U, wins_U + batch_counts_U), d2_N.mean()

    (c_UA, counts_U, wins_U), inertia = jax.lax.scan(step, (c_UA, counts_U, jnp.zeros_like(counts_U)), batches)
    # Re-seed centroids that won nothing this epoch on random points of the data.
    flat_NA = batches.reshape(-1, batches.shape[-1])
    picks_U = jax.random.randint(key, (num_clusters,), 0, flat_NA.shape[0])
    dead_U = (wins_U == 0) & reseed
    c_UA = jnp.where(dead_U[:, None], flat_NA[picks_U], c_UA)
    counts_U = jnp.where(dead_U, 0.0, counts_U)
    return c_UA, counts_U, inertia.mean(), dead_U.sum()


def initial_centroids(data_NA: np.ndarray, options: KMeansOptions) -> np.ndarray:
    """The k-means++ or random initial codebook [U, A] (what `fit` starts from)."""
    options.validate(len(data_NA))
    key = jax.random.key(options.seed)
    sample_key, init_key = jax.random.split(key)
    x_NA = jnp.asarray(data_NA, jnp.float32)
    if options.init == "random":
        picks = jax.random.choice(init_key, x_NA.shape[0], (options.num_clusters,), replace=False)
        return np.array(x_NA[picks])
    if x_NA.shape[0] > options.init_sample:
        x_NA = x_NA[jax.random.choice(sample_key, x_NA.shape[0], (options.init_sample,), replace=False)]
    return np.array(_kmeans_plus_plus(init_key, x_NA, options.num_clusters))


def fit(data_NA: np.ndarray, options: KMeansOptions = KMeansOptions(),
        progress: Callable[[int, float, int], None] | None = None) -> np.ndarray:
    """Fits a codebook [U, A] float32 to `data_NA`; `progress(epoch, mean batch inertia, reseeded)`."""
    data_NA = np.asarray(data_NA, np.float32)
    if data_NA.ndim != 2:
        raise ValueError(f"k-means data must be [points, dims], got shape {data_NA.shape}")
    c_UA = jnp.asarray(initial_centroids(data_NA, options))
    counts_U = jnp.zeros(options.num_clusters, jnp.float32)
    x_NA = jnp.asarray(data_NA)
    batch = min(options.batch_size, x_NA.shape[0])
    num_batches = x_NA.shape[0] // batch
    key = jax.random.fold_in(jax.random.key(options.seed), 1)
    for epoch in range(options.epochs):
        key, perm_key, reseed_key = jax.random.split(key, 3)
        order = jax.random.permutation(perm_key, x_NA.shape[0])[:num_batches * batch]
        batches = x_NA[order].reshape(num_batches, batch, -1)
        # No re-seeding after the last epoch: a re-seeded centroid would go out unrefined.
        last = epoch == options.epochs - 1
        c_UA, counts_U, inertia, reseeded = _epoch(c_UA, counts_U, batches, reseed_key, jnp.asarray(not last))
        if progress is not None:
            progress(epoch, float(inertia), int(reseeded))
    return np.array(c_UA)


def inertia(data_NA: np.ndarray, c_UA: np.ndarray) -> float:
    """Mean squared distance from each point to its nearest centroid."""
    _, d2_N = assign(jnp.asarray(data_NA, jnp.float32), jnp.asarray(c_UA, jnp.float32))
    return float(d2_N.mean())
