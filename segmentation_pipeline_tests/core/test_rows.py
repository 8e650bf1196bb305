"""Row-block helpers: the blocks cover every row once, in order; label codes suit np.bincount."""

from __future__ import annotations

import numpy as np

from segmentation_pipeline.core.rows import label_codes, map_row_blocks


def test_map_row_blocks_fills_every_row_once_with_the_first_blocks_shape_and_dtype() -> None:
    data = np.arange(1000 * 2, dtype=np.float64).reshape(1000, 2)
    calls: list[tuple[int, int]] = []

    def square(start: int, stop: int) -> np.ndarray:
        calls.append((start, stop))
        return (data[start:stop] ** 2).astype(np.float32)

    out = map_row_blocks(square, 1000, block_rows=300)
    assert calls == [(0, 300), (300, 600), (600, 900), (900, 1000)]
    assert out.dtype == np.float32 and out.shape == (1000, 2)
    np.testing.assert_array_equal(out, (data**2).astype(np.float32))
    one = map_row_blocks(lambda a, b: np.arange(a, b, dtype=np.int32), 5, block_rows=300)
    assert one.tolist() == [0, 1, 2, 3, 4] and one.dtype == np.int32


def test_label_codes_keep_non_negative_ints_and_code_anything_else() -> None:
    ids = np.array([3, 0, 3, 7])
    codes, uniques = label_codes(ids)
    assert codes is ids and uniques is None
    for labels, expected in ((np.array([-1, 2, -1]), [0, 1, 0]), (np.array(["b", "a", "b"]), [1, 0, 1])):
        codes, uniques = label_codes(labels)
        assert codes.tolist() == expected
        np.testing.assert_array_equal(uniques[codes], labels)
