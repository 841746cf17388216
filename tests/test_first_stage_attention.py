"""The autoencoders' AttnBlock: scaled_dot_product_attention equals the explicit softmax formula
(softmax(q^T k / sqrt(C)) applied to v, as the original computes it with bmm) and keeps its keys."""
import pytest
import torch

from ldm.modules.diffusionmodules.model import AttnBlock


def explicit_attention(block: AttnBlock, x: torch.Tensor) -> torch.Tensor:
    h = block.norm(x)
    q, k, v = block.q(h), block.k(h), block.v(h)
    b, c, height, width = q.shape
    q = q.reshape(b, c, height * width).permute(0, 2, 1)           # (B, HW, C)
    k = k.reshape(b, c, height * width)                              # (B, C, HW)
    weights = torch.softmax(torch.bmm(q, k) * c ** -0.5, dim=2)     # (B, HW query, HW key)
    v = v.reshape(b, c, height * width)
    h = torch.bmm(v, weights.permute(0, 2, 1)).reshape(b, c, height, width)
    return x + block.proj_out(h)


@pytest.mark.parametrize("shape", [(2, 32, 3, 5), (1, 64, 4, 4)])
def test_sdpa_path_equals_the_explicit_softmax(shape):
    torch.manual_seed(0)
    block = AttnBlock(shape[1]).eval()
    with torch.no_grad():  # non-trivial norm affine and biases, so every term matters
        for p in block.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = 2.0 * torch.randn(*shape)
    with torch.no_grad():
        torch.testing.assert_close(block(x), explicit_attention(block, x), atol=1e-5, rtol=1e-5)


def test_state_dict_keys_are_the_original_ones():
    assert set(AttnBlock(32).state_dict()) == {f"{m}.{p}" for m in ("norm", "q", "k", "v", "proj_out")
                                               for p in ("weight", "bias")}
