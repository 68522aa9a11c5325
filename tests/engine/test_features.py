"""app/engine/features.py on its own: float32_shortest, the numbers every analysis prints."""

from __future__ import annotations

import numpy as np
import torch

from app.engine.features import float32_shortest


def test_float32_shortest_reads_back_exactly_with_the_fewest_digits():
    rng = np.random.default_rng(0)
    values = np.concatenate([
        rng.standard_normal(20_000) * 10.0 ** rng.integers(-16, 29, 20_000),  # every magnitude
        rng.random(20_000) * 5,  # activations
        [0.0, -0.0, 1.0, 0.5, 0.1, 0.3, 999_999.94, 1e6, 16_777_216.0, 1e-45, 3.4e38],
    ]).astype(np.float32)
    out = float32_shortest(torch.from_numpy(values))
    assert out.dtype == torch.float64 and out.shape == (len(values),)
    got = out.tolist()
    assert (np.array(got, dtype=np.float32) == values).all()
    # inside 1e-14 to 1e27: the double that numpy's shortest float32 repr reads as (outside: exact only)
    promised = [(g, v) for g, v in zip(got, values, strict=True) if v == 0 or 1e-14 <= abs(v) < 1e27]
    assert len(promised) > 30_000
    assert all(g == float(str(v)) for g, v in promised)


def test_float32_shortest_of_half_precision_and_non_finite_values():
    half = torch.tensor([0.1, 3.3, 2.5e-3], dtype=torch.bfloat16)
    assert torch.equal(float32_shortest(half).to(torch.bfloat16), half)
    assert float32_shortest(torch.tensor([0.1], dtype=torch.float16)).tolist() == [0.099975586]
    odd = float32_shortest(torch.tensor([float("inf"), float("-inf"), float("nan"), 1.5]))
    assert odd[:2].tolist() == [float("inf"), float("-inf")] and odd[2].isnan() and odd[3] == 1.5
    exact = torch.tensor([0.1], dtype=torch.float64)
    assert float32_shortest(exact) is exact  # doubles are left as they are
