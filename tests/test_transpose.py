"""The blocked transpose against NumPy's obvious one, bit for bit."""

import ml_dtypes
import numpy as np
import pytest

from most_jax.checkpoint.transpose import transpose_into, transposed


def _random_bits(shape, dtype, seed=0):
    """Arbitrary bit patterns (NaN payloads, -0, subnormals included) of `dtype`."""
    dtype = np.dtype(dtype)
    raw = np.random.default_rng(seed).integers(0, 256, int(np.prod(shape)) * dtype.itemsize, dtype=np.uint8)
    return raw.view(dtype).reshape(shape)


@pytest.mark.parametrize("shape", [(1, 1), (7, 5), (8, 1024), (9, 1025), (300, 17), (17, 2100), (3, 40, 33)])
@pytest.mark.parametrize("dtype", [ml_dtypes.bfloat16, np.float32, np.int8, np.float64])
def test_matches_swapaxes_bit_exact(shape, dtype):
    src = _random_bits(shape, dtype)
    expected = np.swapaxes(src, -1, -2).copy()
    out = np.empty(expected.shape, src.dtype)
    transpose_into(src, out)
    assert out.tobytes() == expected.tobytes()
    assert transposed(src).tobytes() == expected.tobytes()


def test_strided_source_and_destination_row_of_a_stack():
    stack = _random_bits((4, 30, 2 * 1030), ml_dtypes.bfloat16, seed=1)
    src = stack[:, :, 1030:]  # not contiguous: the second half of each row (a fused gate_up slice)
    out = np.zeros((4, 1030, 30), src.dtype)
    transpose_into(src[2], out[2])
    assert out[2].tobytes() == np.swapaxes(src[2], 0, 1).copy().tobytes()
    assert not out[[0, 1, 3]].view(np.uint16).any()  # nothing written outside the target row


def test_column_block_of_a_larger_destination():
    src = _random_bits((5000, 24), ml_dtypes.bfloat16, seed=2)
    out = np.zeros((24, 5000), src.dtype)
    for start in range(0, 5000, 2048):  # row blocks of the source land in column blocks of out
        transpose_into(src[start:start + 2048], out[:, start:start + 2048])
    assert out.tobytes() == src.T.copy().tobytes()


def test_cast_after_transpose():
    src = np.arange(6, dtype=np.float32).reshape(2, 3).astype(ml_dtypes.bfloat16)
    out = transposed(src, np.dtype(np.float32))
    assert out.dtype == np.float32 and np.array_equal(out, np.arange(6, dtype=np.float32).reshape(2, 3).T)


def test_mismatched_destination_is_refused():
    src = np.zeros((4, 6), np.float32)
    with pytest.raises(ValueError, match="does not fit"):
        transpose_into(src, np.zeros((4, 6), np.float32))
    with pytest.raises(ValueError, match="does not fit"):
        transpose_into(src, np.zeros((6, 4), np.float64))
