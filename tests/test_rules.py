"""Per-rule tests: prune random channels of every free symbol of a one-op program, run the
rewritten program on sliced inputs and compare with the sliced original output (inputs of the
original have their pruned channels zeroed, so contractions over them contribute nothing)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from prunepass.testing import check_rule

torch.manual_seed(0)


def r(*shape):
    return torch.randn(*shape)


def idx(*shape, high=10):
    return torch.randint(0, high, shape)


# (id, function, inputs, must prune a non-batch channel symbol)
CASES = [
    ("conv1d", lambda x, w, b: F.conv1d(x, w, b, padding=1), (r(2, 6, 9), r(8, 6, 3), r(8)), True),
    ("conv2d", lambda x, w, b: F.conv2d(x, w, b, stride=2, padding=1), (r(2, 6, 7, 7), r(8, 6, 3, 3), r(8)), True),
    ("conv3d", lambda x, w: F.conv3d(x, w, padding=1), (r(1, 4, 3, 5, 5), r(6, 4, 3, 3, 3)), True),
    ("conv2d_same", lambda x, w: F.conv2d(x, w, padding="same"), (r(2, 6, 7, 7), r(8, 6, 3, 3)), True),
    ("depthwise", lambda x, w, b: F.conv2d(x, w, b, groups=6, padding=1), (r(2, 6, 5, 5), r(6, 1, 3, 3), r(6)), True),
    ("depthwise_mult", lambda x, w: F.conv2d(x, w, groups=6), (r(2, 6, 5, 5), r(12, 1, 3, 3)), True),
    ("grouped", lambda x, w: F.conv2d(x, w, groups=2), (r(2, 8, 5, 5), r(6, 4, 3, 3)), True),
    ("conv_transpose2d", lambda x, w, b: F.conv_transpose2d(x, w, b, stride=2), (r(2, 6, 4, 4), r(6, 5, 2, 2), r(5)), True),
    ("conv_transpose_grouped", lambda x, w: F.conv_transpose2d(x, w, groups=2), (r(2, 6, 4, 4), r(6, 3, 3, 3)), True),
    ("conv_transpose1d", lambda x, w: F.conv_transpose1d(x, w, stride=2), (r(2, 4, 6), r(4, 3, 3)), True),
    ("linear", lambda x, w, b: F.linear(x, w, b), (r(2, 3, 6), r(5, 6), r(5)), True),
    ("matmul_batched", lambda a, b: a @ b, (r(2, 1, 4, 6), r(3, 6, 5)), True),
    ("mm", lambda a, b: torch.mm(a, b), (r(4, 6), r(6, 5)), True),
    ("bmm", lambda a, b: torch.bmm(a, b), (r(2, 4, 6), r(2, 6, 5)), True),
    ("addmm", lambda c, a, b: torch.addmm(c, a, b), (r(5), r(4, 6), r(6, 5)), True),
    ("baddbmm", lambda c, a, b: torch.baddbmm(c, a, b), (r(2, 4, 5), r(2, 4, 6), r(2, 6, 5)), True),
    ("batch_norm", lambda x, m, v, w, b: F.batch_norm(x, m, v, w, b), (r(2, 6, 3, 3), r(6), r(6).abs() + 1, r(6), r(6)), True),
    ("instance_norm", lambda x, w, b: F.instance_norm(x, weight=w, bias=b), (r(2, 6, 4, 4), r(6), r(6)), True),
    ("group_norm", lambda x, w, b: F.group_norm(x, 2, w, b), (r(2, 6, 3, 3), r(6), r(6)), False),
    ("layer_norm", lambda x, w, b: F.layer_norm(x, (6,), w, b), (r(3, 4, 6), r(6), r(6)), False),
    ("rms_norm", lambda x, w: F.rms_norm(x, (6,), w), (r(3, 4, 6), r(6)), False),
    ("embedding", lambda i, w: F.embedding(i, w), (idx(2, 5), r(10, 6)), True),
    ("add_broadcast", lambda x, b: x + b, (r(2, 6, 4, 4), r(6, 1, 1)), True),
    ("mul_sub_div", lambda x, y: (x * y - y) / (y.abs() + 1), (r(2, 6), r(2, 6)), True),
    ("where", lambda c, x, y: torch.where(c > 0, x, y), (r(2, 6), r(2, 6), r(1, 6)), True),
    ("bool_masks", lambda x, y: torch.where(((x > 0) & (y > 0)) | ((x < -1) ^ (y < -1)), x, y), (r(2, 6), r(1, 6)), True),
    ("activations", lambda x: F.hardswish(F.gelu(F.silu(torch.sigmoid(F.relu(x)))) + F.leaky_relu(x) + F.hardtanh(x) + torch.tanh(x) + F.relu6(x) + F.hardsigmoid(x)), (r(2, 6, 3),), True),
    ("softmax_seq", lambda x: F.softmax(x, dim=1), (r(2, 5, 6),), True),
    ("dropout_eval", lambda x: F.dropout(x, 0.5, training=False) * 2, (r(2, 6),), True),
    ("sum_channels", lambda x: x.sum(dim=1), (r(2, 6, 3),), True),
    ("mean_spatial", lambda x: x.mean(dim=(2, 3), keepdim=True), (r(2, 6, 3, 3),), True),
    ("amax_spatial", lambda x: x.amax(dim=-1), (r(2, 6, 3),), True),
    ("max_pool2d", lambda x: F.max_pool2d(x, 2), (r(2, 6, 4, 4),), True),
    ("avg_pool2d", lambda x: F.avg_pool2d(x, 2), (r(2, 6, 4, 4),), True),
    ("max_pool1d", lambda x: F.max_pool1d(x, 2), (r(2, 6, 8),), True),
    ("adaptive_avg_pool2d", lambda x: F.adaptive_avg_pool2d(x, 1), (r(2, 6, 4, 4),), True),
    ("adaptive_avg_pool3d", lambda x: F.adaptive_avg_pool3d(x, 1), (r(1, 6, 2, 4, 4),), True),
    ("interpolate_nearest", lambda x: F.interpolate(x, scale_factor=2.0), (r(2, 6, 3, 3),), True),
    ("interpolate_bilinear", lambda x: F.interpolate(x, size=(5, 5), mode="bilinear"), (r(2, 6, 3, 3),), True),
    ("pixel_shuffle", lambda x: F.pixel_shuffle(x, 2), (r(1, 12, 3, 3),), True),
    ("pixel_unshuffle", lambda x: F.pixel_unshuffle(x, 2), (r(1, 3, 4, 4),), True),
    ("cat", lambda x, y: torch.cat([x, y], dim=1), (r(2, 3, 4), r(2, 5, 4)), True),
    ("stack", lambda x, y: torch.stack([x, y], dim=1), (r(2, 6), r(2, 6)), True),
    ("split", lambda x: torch.split(x, 3, dim=1)[1] * 2, (r(2, 8),), True),
    ("split_with_sizes", lambda x: torch.split(x, [2, 6], dim=1)[1] + 1, (r(2, 8),), True),
    ("chunk_cat", lambda x: torch.cat(list(reversed(x.chunk(2, dim=1))), 1), (r(2, 8, 3),), True),
    ("slice", lambda x: x[:, 2:7] * 3, (r(3, 9),), True),
    ("narrow", lambda x: x.narrow(1, 1, 4), (r(3, 9),), True),
    ("select_seq", lambda x: x[:, 0], (r(2, 5, 6),), True),
    ("index_select_seq", lambda x, i: x.index_select(1, i), (r(2, 5, 6), torch.tensor([0, 2])), True),
    ("view_merge", lambda x: x.view(2, -1), (r(2, 6, 3),), True),
    ("flatten", lambda x: torch.flatten(x, 1), (r(2, 6, 3, 3),), True),
    ("unflatten", lambda x: x.unflatten(-1, (3, 4)), (r(2, 12),), True),
    ("head_split", lambda x: x.view(2, 5, 3, 4).transpose(1, 2).reshape(2, 3 * 5, 4), (r(2, 5, 12),), True),
    ("channel_shuffle", lambda x, y: torch.cat([x, y], 1).view(2, 2, 3, 4).transpose(1, 2).reshape(2, 6, 4), (r(2, 3, 4), r(2, 3, 4)), True),
    ("shuffle_then_chunk", lambda x, y: torch.cat([x, y], 1).view(2, 2, 4, 3).transpose(1, 2).reshape(2, 8, 3).chunk(2, dim=1)[0], (r(2, 4, 3), r(2, 4, 3)), True),
    ("permute", lambda x: x.permute(0, 2, 3, 1).contiguous(), (r(2, 6, 3, 3),), True),
    ("squeeze_unsqueeze", lambda x: x.unsqueeze(1).squeeze(1).unsqueeze(-1), (r(2, 6),), True),
    ("expand", lambda x: x[:, :, None].expand(2, 6, 4) * 1.0, (r(2, 6),), True),
    ("clone_to", lambda x: x.clone().to(torch.float64).float(), (r(2, 6),), True),
    ("sdpa_scaled", lambda q, k, v: F.scaled_dot_product_attention(q, k, v, scale=0.3), (r(2, 3, 5, 4), r(2, 3, 7, 4), r(2, 3, 7, 6)), True),
    ("sdpa_mask", lambda q, k, v, m: F.scaled_dot_product_attention(q, k, v, attn_mask=m, scale=0.5), (r(1, 2, 5, 4), r(1, 2, 5, 4), r(1, 2, 5, 4), r(5, 5)), True),
    ("sdpa_gqa", lambda q, k, v: F.scaled_dot_product_attention(q, k, v, enable_gqa=True, scale=0.5), (r(1, 4, 5, 4), r(1, 2, 5, 4), r(1, 2, 5, 4)), True),
    ("repeat", lambda x: x.repeat(1, 2), (r(2, 6),), True),
    ("repeat_interleave", lambda x: x.repeat_interleave(2, dim=1), (r(2, 6),), True),
    ("pad_spatial", lambda x: F.pad(x, (1, 1)), (r(2, 6, 4),), True),
]


@pytest.mark.parametrize("fn,inputs,needs_channel", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_rule_slices_like_eager(fn, inputs, needs_channel):
    result = check_rule(fn, *inputs)
    assert result.pruned, "no symbol was pruned: the rule froze everything"
    if needs_channel:
        # at least one symbol other than the batch dim of the first input was pruned
        assert any(o != "args_0[0]" for o in result.origins), result.origins


def test_conv_head_split_and_merge_round_trip():
    def attn(x, w_qkv, w_o):
        b, t, c = x.shape
        qkv = F.linear(x, w_qkv).reshape(b, t, 3, 2, c // 2).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        o = F.scaled_dot_product_attention(q, k, v, scale=0.25)
        return F.linear(o.transpose(1, 2).reshape(b, t, c), w_o)

    result = check_rule(attn, r(2, 5, 8), r(24, 8), r(8, 8))
    assert len(result.pruned) >= 2  # heads and head_dim of the fused projection
