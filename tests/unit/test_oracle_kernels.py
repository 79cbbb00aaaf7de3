"""The host-side decoding of dense boundary indices that the kernels rely on."""

from __future__ import annotations

import random

import numpy as np
import pytest

from runner.oracle.context import MASK_RANK, POPCOUNT
from runner.oracle.kernels import decode
from runner.oracle.solve import boundary_index


@pytest.mark.parametrize("r", [1, 2, 3, 4, 5, 6, 7])
def test_decode_inverts_boundary_index(r: int) -> None:
    rng = random.Random(r)
    masks_of_r = [m for m in range(128) if POPCOUNT[m] == r]
    cases = [(rng.randrange(4), tuple(rng.choice(masks_of_r) for _ in range(4))) for _ in range(50)]
    idx = np.array([boundary_index(leader, masks)[1] for leader, masks in cases], np.int64)
    digits = decode(idx, r)
    for col, (leader, masks) in enumerate(cases):
        assert digits[4, col] == leader
        assert [int(d) for d in digits[:4, col]] == [int(MASK_RANK[m]) for m in masks]
