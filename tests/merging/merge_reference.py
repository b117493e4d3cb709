"""Straightforward reference implementations of every merge method (independent of r2m.merging).

Deliberately naive: task vectors are flattened into an N×D matrix, SVDs are full
``torch.linalg.svd`` calls, polar factors come from an SVD, TIES' threshold is a
``torch.kthvalue`` (what a competent straightforward implementation uses; a full sort is 30× slower). Default dtype float64 (the tests);
``benchmarks/merge_speed.py`` runs the same code in float32 as its "straightforward route".
Only DARE's mask rule (a seeding convention, not math) is imported from the library.
"""

from __future__ import annotations

import math
import re

import torch
from torch import Tensor

BLOCK_RE = re.compile(
    r"^transformer\.resblocks\.\d+\.(attn\.in_proj_weight|attn\.out_proj\.weight|mlp\.c_fc\.weight|mlp\.c_proj\.weight)$"
)


def _taus(base, specs, dtype):
    keys = list(base)
    b = {k: base[k].to(dtype) for k in keys}
    return keys, b, [{k: s[k].to(dtype) - b[k] for k in keys} for s in specs]


def _flat(d, keys):
    return torch.cat([d[k].reshape(-1) for k in keys])


def _unflat(v, keys, like):
    out, o = {}, 0
    for k in keys:
        n = like[k].numel()
        out[k] = v[o : o + n].reshape(like[k].shape)
        o += n
    return out


def _finish(base, b, delta, keys):
    return {k: (b[k] + delta[k]).to(base[k].dtype) for k in keys}


def _svd(x):
    """torch.linalg.svd (reduced); float32 LAPACK sometimes fails to converge on matrices with
    many repeated zero singular values: then that one SVD is done in float64."""
    try:
        return torch.linalg.svd(x, full_matrices=False)
    except RuntimeError:
        return tuple(y.to(x.dtype) for y in torch.linalg.svd(x.double(), full_matrices=False))


def _svd_lr(x, r):
    u, s, vh = _svd(x)
    return (u[:, :r] * s[:r]) @ vh[:r]


def _polar(x):
    p, _, qh = _svd(x)
    return p @ qh


def _rank(ratio, shape):
    k = min(shape)
    return k if ratio is None else min(k, max(1, math.floor(ratio * k)))


def average(base, specs, dtype=torch.float64):
    keys, b, taus = _taus(base, specs, dtype)
    return _finish(base, b, {k: sum(t[k] for t in taus) / len(taus) for k in keys}, keys)


def task_arithmetic(base, specs, lam=0.3, dtype=torch.float64):
    keys, b, taus = _taus(base, specs, dtype)
    return _finish(base, b, {k: lam * sum(t[k] for t in taus) for k in keys}, keys)


def ties(base, specs, k=0.2, merge_func="mean", lam=1.0, dtype=torch.float64):
    keys, b, taus = _taus(base, specs, dtype)
    t = torch.stack([_flat(x, keys) for x in taus])  # N×D
    d = t.shape[1]
    n_keep = math.floor(k * d)
    trimmed = torch.zeros_like(t)
    for i in range(t.shape[0]):
        a = t[i].abs()
        # the (D − ⌊kD⌋)-th smallest |τ_i| (1-indexed): the trim threshold
        thr = torch.kthvalue(a, d - n_keep).values if n_keep < d else -1.0
        trimmed[i] = torch.where(a >= thr, t[i], 0)
    sign = torch.sign(trimmed.sum(0))
    sign[sign == 0] = torch.sign(trimmed.sum())
    agree = (torch.sign(trimmed) == sign) & (trimmed != 0)
    num = (trimmed * agree).sum(0)
    merged = num / agree.sum(0).clamp_min(1) if merge_func == "mean" else num
    return _finish(base, b, _unflat(lam * merged, keys, b), keys)


def dare(base, specs, p=0.5, seed=0, lam=0.3, dtype=torch.float64):
    from r2m.merging.methods.dare import dare_mask

    keys, b, taus = _taus(base, specs, dtype)
    delta = {}
    for key in keys:
        delta[key] = lam * sum(
            taus[i][key] * dare_mask(specs[i][key], key, seed, p).to(taus[i][key].device) / (1 - p)
            for i in range(len(specs))
        )
    return _finish(base, b, delta, keys)


def cart(base, specs, rank_ratio=0.12, lam=2.0, dtype=torch.float64):
    keys, b, taus = _taus(base, specs, dtype)
    delta = {}
    for key in keys:
        mean = sum(t[key] for t in taus) / len(taus)
        delta[key] = mean
        if BLOCK_RE.search(key):
            r = _rank(rank_ratio, mean.shape)
            delta[key] = mean + lam * sum(_svd_lr(t[key] - mean, r) for t in taus)
    return _finish(base, b, delta, keys)


def tsv(base, specs, alpha=1.0, dtype=torch.float64):
    keys, b, taus = _taus(base, specs, dtype)
    n = len(taus)
    delta = {}
    for key in keys:
        if b[key].ndim != 2:
            delta[key] = alpha * sum(t[key] for t in taus) / n
            continue
        r = max(1, min(b[key].shape) // n)
        us, ss, vs = [], [], []
        for t in taus:
            u, s, vh = _svd(t[key])
            us.append(u[:, :r]), ss.append(s[:r]), vs.append(vh[:r].T)
        u, s, v = torch.cat(us, 1), torch.cat(ss), torch.cat(vs, 1)
        delta[key] = alpha * (_polar(u) * s) @ _polar(v).T
    return _finish(base, b, delta, keys)


def iso_c(base, specs, alpha=1.0, dtype=torch.float64):
    keys, b, taus = _taus(base, specs, dtype)
    delta = {}
    for key in keys:
        m = sum(t[key] for t in taus)
        if m.ndim != 2:
            delta[key] = alpha * m / len(taus)
            continue
        u, s, vh = _svd(m)
        delta[key] = alpha * s.mean() * u @ vh
    return _finish(base, b, delta, keys)


def iso_cts(base, specs, common_fraction=0.8, alpha=1.0, dtype=torch.float64):
    keys, b, taus = _taus(base, specs, dtype)
    n = len(taus)
    delta = {}
    for key in keys:
        m = sum(t[key] for t in taus)
        if m.ndim != 2:
            delta[key] = alpha * m / n
            continue
        kk = min(m.shape)
        c0 = math.floor(kk * common_fraction)
        d = round((kk - c0) / n)
        c = kk - n * d
        u, s, vh = _svd(m)
        us, ss, vs = [u[:, :c]], [s[:c]], [vh[:c].T]
        for t in taus:
            r = t[key] - u[:, :c] @ (u[:, :c].T @ t[key])
            ui, si, vhi = _svd(r)
            us.append(ui[:, :d]), ss.append(si[:d]), vs.append(vhi[:d].T)
        uu, sv, vv = torch.cat(us, 1), torch.cat(ss), torch.cat(vs, 1)
        delta[key] = alpha * sv.mean() * _polar(uu) @ _polar(vv).T
    return _finish(base, b, delta, keys)


def r2m_parts(base, specs, k=1, center=False, residual="orthogonal", rank_ratio=0.1, norm_match=True,
              alpha=0.6, eta="relative", block_weighting="none", dtype=torch.float64):
    """R²M straight from the definition (N×D matrix + SVD); returns a dict of intermediate results."""
    keys, b, taus = _taus(base, specs, dtype)
    n = len(taus)
    t = torch.stack([_flat(x, keys) for x in taus])  # N×D
    sizes = [b[key].numel() for key in keys]
    tbar = t.mean(0)
    # per-entry weights w (γ_l repeated over tensor l); weighted matrix T W^{1/2}
    if block_weighting == "fro_sqrtP":
        w_parts, o = [], 0
        for p in sizes:
            blk = t[:, o : o + p]
            if center:
                blk = blk - blk.mean(0)
            w_parts.append(torch.full((p,), math.sqrt(p) / float(blk.norm()), dtype=dtype, device=t.device))
            o += p
        w = torch.cat(w_parts)
    else:
        w = torch.ones(t.shape[1], dtype=dtype, device=t.device)
    tw = t * w.sqrt()
    if center:
        tw = tw - tw.mean(0)
    try:
        _, s, vh = torch.linalg.svd(tw, full_matrices=False)
    except RuntimeError:  # cuSOLVER rejects very wide matrices (3 × 86M): do that one SVD on the CPU
        _, s, vh = (x.to(tw.device) for x in torch.linalg.svd(tw.cpu(), full_matrices=False))
    rank = int((s * s > 1e-10 * s[0] * s[0]).sum()) if float(s[0]) > 0 else 0
    v = vh[: min(k, rank)]  # k×D, orthonormal rows

    def proj(x):
        return (v.T @ (v @ (x * w.sqrt()))) / w.sqrt()

    core = proj(tbar)
    if residual == "orthogonal":
        rho = torch.stack([t[i] - proj(t[i]) for i in range(n)])
    else:
        rho = t - core
    rho_d = [_unflat(rho[i], keys, b) for i in range(n)]
    for i in range(n):
        for key in keys:
            if BLOCK_RE.search(key):
                rho_d[i][key] = _svd_lr(rho_d[i][key], _rank(rank_ratio, b[key].shape))
    rho = torch.stack([_flat(r, keys) for r in rho_d])
    norms = rho.norm(dim=1)
    zero = 1e-5 * float(t.norm(dim=1).max())
    if norm_match:
        m = norms.mean()
        rho = torch.stack([rho[i] * (m / norms[i]) if norms[i] > zero else torch.zeros_like(rho[i]) for i in range(n)])
    tau_res = rho.mean(0)
    res_norm, core_norm = float(tau_res.norm()), float(core.norm())
    if res_norm <= zero:
        eta_v = 0.0
    else:
        eta_v = alpha * core_norm / res_norm if eta == "relative" else alpha * core_norm
    merged = _finish(base, b, _unflat(core + eta_v * tau_res, keys, b), keys)
    return {"merged": merged, "v": v, "core": core, "rho": rho_d, "tau_res": tau_res, "keys": keys, "eta": eta_v}


def r2m(base, specs, dtype=torch.float64, **hp):
    return r2m_parts(base, specs, dtype=dtype, **hp)["merged"]


REFERENCES = {
    "average": average,
    "task_arithmetic": task_arithmetic,
    "ties": ties,
    "dare": dare,
    "cart": cart,
    "tsv": tsv,
    "iso_c": iso_c,
    "iso_cts": iso_cts,
    "r2m": r2m,
}


def max_rel_diff(a: dict[str, Tensor], b: dict[str, Tensor], base: dict[str, Tensor] | None = None) -> float:
    """max over tensors of ‖a − b‖ / ‖b‖ (or ‖a − b‖ / ‖b − base‖ when ``base`` is given:
    relative to the merge update, the stricter measure)."""
    worst = 0.0
    for key in b:
        x, y = a[key].double(), b[key].double()
        ref = y - base[key].double() if base is not None else y
        den = float(ref.norm())
        num = float((x - y).norm())
        worst = max(worst, num / den if den > 0 else num)
    return worst
