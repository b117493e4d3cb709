"""Generated test inputs: a tiny open_clip vision tower as θ0 and structured random specialists."""

from __future__ import annotations

import torch


def open_clip_layout(width: int, layers: int, patch: int = 8, image: int = 32, out_dim: int = 16) -> dict:
    """Keys and shapes of an open_clip ``VisionTransformer`` state dict, in its order (used when
    open_clip is not installed; ``test_layout_matches_open_clip`` checks it against open_clip)."""
    tokens = (image // patch) ** 2 + 1
    shapes = {"class_embedding": (width,), "positional_embedding": (tokens, width), "proj": (width, out_dim),
              "conv1.weight": (width, 3, patch, patch), "ln_pre.weight": (width,), "ln_pre.bias": (width,)}
    for i in range(layers):
        p = f"transformer.resblocks.{i}."
        shapes.update({
            p + "ln_1.weight": (width,), p + "ln_1.bias": (width,),
            p + "attn.in_proj_weight": (3 * width, width), p + "attn.in_proj_bias": (3 * width,),
            p + "attn.out_proj.weight": (width, width), p + "attn.out_proj.bias": (width,),
            p + "ln_2.weight": (width,), p + "ln_2.bias": (width,),
            p + "mlp.c_fc.weight": (4 * width, width), p + "mlp.c_fc.bias": (4 * width,),
            p + "mlp.c_proj.weight": (width, 4 * width), p + "mlp.c_proj.bias": (width,),
        })
    shapes.update({"ln_post.weight": (width,), "ln_post.bias": (width,)})
    return shapes


def tiny_base(seed: int = 0, width: int = 32, layers: int = 2) -> dict[str, torch.Tensor]:
    """State dict of a real (tiny) open_clip VisionTransformer, randomly initialised (or, without
    open_clip, random tensors with the same keys and shapes)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        try:
            from open_clip.transformer import VisionTransformer
        except ImportError:
            state = {k: 0.05 * torch.randn(shape) for k, shape in open_clip_layout(width, layers).items()}
        else:
            vit = VisionTransformer(
                image_size=32, patch_size=8, width=width, layers=layers, heads=2, mlp_ratio=4.0, output_dim=16
            )
            state = vit.state_dict()
        # LayerNorm weights init to exactly 1 / biases to 0: perturb so no tensor is special
        return {k: (t + 0.02 * torch.randn_like(t)).detach().clone() for k, t in state.items()}


def make_specialists(
    base: dict[str, torch.Tensor], n: int, seed: int = 1, scale: float = 0.1, shared: float = 0.0
) -> list[dict[str, torch.Tensor]]:
    """θ_i = θ0 + τ_i with τ_i = shared·c + own_i: matrices get a decaying spectrum (clear gaps
    between singular values), other tensors Gaussian entries; scale relative to the tensor's RMS."""
    g = torch.Generator().manual_seed(seed)

    def draw(t: torch.Tensor) -> torch.Tensor:
        rms = float(t.pow(2).mean().sqrt()) + 1e-3
        if t.ndim == 2:
            m, k = t.shape
            kk = min(m, k)
            u = torch.linalg.qr(torch.randn(m, kk, generator=g, dtype=torch.float64))[0]
            v = torch.linalg.qr(torch.randn(k, kk, generator=g, dtype=torch.float64))[0]
            s = 0.8 ** torch.arange(kk, dtype=torch.float64) * (1 + 0.1 * torch.rand(kk, generator=g, dtype=torch.float64))
            s = s.sort(descending=True).values
            x = (u * s) @ v.T
            x = x / x.pow(2).mean().sqrt()
        else:
            x = torch.randn(t.shape, generator=g, dtype=torch.float64)
        return (scale * rms * x).to(t.dtype)

    common = {k: draw(t) for k, t in base.items()}
    return [{k: (t + shared * common[k] + draw(t)).clone() for k, t in base.items()} for _ in range(n)]
