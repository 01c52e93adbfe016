import pytest
import torch

from dedicated.quantize_job.qtensor import QuantizedWeight, code_range
from dedicated.quantize_job.rtn import dequantize, rtn, rtn_quantize, search_scales


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_codes_in_range_and_scales_bf16_exact(bits):
    w = torch.randn(3, 16, 256)
    codes, scales = rtn(w, bits, 128)
    lo, hi = code_range(bits)
    assert codes.dtype == torch.int8 and int(codes.min()) >= lo and int(codes.max()) <= hi
    assert scales.shape == (3, 16, 2)
    assert torch.equal(scales, scales.to(torch.bfloat16).float())
    assert (scales != 0).all()


def test_error_shrinks_with_bits():
    w = torch.randn(2, 32, 256)
    errs = [float((dequantize(*rtn(w, b, 128), 128) - w).square().sum()) for b in (2, 3, 4, 8)]
    assert errs == sorted(errs, reverse=True) and errs[-1] < errs[0] / 100


def test_scale_search_beats_plain_absmax_at_2_bit():
    w = torch.randn(64, 256)
    searched = dequantize(*rtn(w, 2, 128), 128)
    absmax = w.reshape(64, 2, 128).abs().amax(-1) / 2
    naive = torch.clamp(torch.round(w / absmax.repeat_interleave(128, 1)), -2, 1) * absmax.repeat_interleave(128, 1)
    assert (searched - w).square().sum() < 0.9 * (naive - w).square().sum()


def test_hessian_diagonal_weighting_prefers_important_columns():
    torch.manual_seed(0)
    w = torch.randn(16, 128)
    weight = torch.ones(128)
    weight[:8] = 1000.0
    s_plain = search_scales(w, 2, 128)
    s_weighted = search_scales(w, 2, 128, col_weight=weight)
    err = lambda s: float(((dequantize(torch.clamp(torch.round(w / s), -2, 1).to(torch.int8), s, 128) - w).square() * weight).sum())
    assert err(s_weighted) <= err(s_plain)


def test_rtn_quantize_returns_shared_contract():
    w = torch.randn(8, 128)
    q = rtn_quantize(w, 4, 128)
    assert isinstance(q, QuantizedWeight) and q.bits == 4 and q.group_size == 128
    assert torch.allclose(q.dequantize(), dequantize(q.codes, q.scales, 128))


def test_zero_group_gives_zero_codes():
    w = torch.zeros(4, 128)
    q = rtn_quantize(w, 2, 128)
    assert (q.codes == 0).all() and torch.isfinite(q.scales).all()


def test_bad_input_is_refused():
    w = torch.randn(4, 128)
    w[1, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN/Inf"):
        rtn_quantize(w, 2, 128)
    with pytest.raises(ValueError, match="does not divide"):
        rtn_quantize(torch.randn(4, 100), 2, 128)
    with pytest.raises(ValueError, match="unsupported bit width"):
        rtn_quantize(torch.randn(4, 128), 5, 128)
