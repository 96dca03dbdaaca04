"""Test-wide settings: 8 simulated CPU devices for mesh tests, strict rank promotion; the
`compile_cache` fixture."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

import jax  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")


import pytest  # noqa: E402


@pytest.fixture
def compile_cache(tmp_path):
    """A test whose runs compile the same steps (a straight run, then a stopped and a resumed one):
    a persistent cache in tmp_path compiles each once (reset around it: the cache binds to the
    directory of its first use)."""
    from jax.experimental.compilation_cache import compilation_cache

    saved = {k: getattr(jax.config, k) for k in ("jax_compilation_cache_dir",
                                                   "jax_persistent_cache_min_compile_time_secs")}
    jax.config.update("jax_compilation_cache_dir", str(tmp_path / "jax_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    compilation_cache.reset_cache()
    yield
    for k, v in saved.items():
        jax.config.update(k, v)
    compilation_cache.reset_cache()


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_code():
    """Drops every module's compiled executables and traces when it ends: the whole suite in one
    process otherwise holds thousands of them, and XLA:CPU has crashed (a segfault while compiling
    the U2++ train step) late in such a run though every file passes alone."""
    yield
    jax.clear_caches()
    import gc

    gc.collect()
