"""Straightforward float64 reference computations (loops, brute force) for the metric tests.

Written independently of ``r2m.evaluation.functional``: thresholds are enumerated one by one and
counted with boolean masks; nothing is shared with the library code.
"""

from __future__ import annotations

import numpy as np


def ref_counts(p, y):
    """(fps, tps) at each distinct score, thresholds descending (predict fake if p >= t)."""
    p = np.asarray(p, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    fps, tps = [], []
    for t in sorted(set(p.tolist()), reverse=True):
        pred = p >= t
        tps.append(int(np.sum(pred & (y == 1))))
        fps.append(int(np.sum(pred & (y == 0))))
    return fps, tps


def ref_roc(p, y, drop_intermediate=True):
    """sklearn ``roc_curve`` semantics: optional removal of collinear points, then the origin."""
    fps, tps = ref_counts(p, y)
    if drop_intermediate and len(fps) > 2:
        keep = [0]
        for i in range(1, len(fps) - 1):
            second_fp = fps[i + 1] - 2 * fps[i] + fps[i - 1]
            second_tp = tps[i + 1] - 2 * tps[i] + tps[i - 1]
            if second_fp != 0 or second_tp != 0:
                keep.append(i)
        keep.append(len(fps) - 1)
        fps = [fps[i] for i in keep]
        tps = [tps[i] for i in keep]
    fps = [0] + fps
    tps = [0] + tps
    fpr = [f / fps[-1] for f in fps]
    tpr = [t / tps[-1] for t in tps]
    return np.array(fpr), np.array(tpr)


def ref_auc_trapezoid(p, y):
    fpr, tpr = ref_roc(p, y, drop_intermediate=False)
    area = 0.0
    for i in range(1, len(fpr)):
        area += (fpr[i] - fpr[i - 1]) * (tpr[i] + tpr[i - 1]) / 2.0
    return area


def ref_auc_pairs(p, y):
    """Mann–Whitney form: P(score_fake > score_real) + ½ P(equal), over all pairs."""
    p = np.asarray(p, dtype=np.float64)
    y = np.asarray(y)
    pos, neg = p[y == 1], p[y == 0]
    total = 0.0
    for s in pos:
        total += np.sum(s > neg) + 0.5 * np.sum(s == neg)
    return total / (len(pos) * len(neg))


def ref_ap(p, y):
    """Step-wise AP: Σ (R_k − R_{k−1}) · P_k over thresholds in decreasing order."""
    fps, tps = ref_counts(p, y)
    n_pos = tps[-1]
    ap, prev_recall = 0.0, 0.0
    for fp, tp in zip(fps, tps):
        recall = tp / n_pos
        precision = tp / (tp + fp)
        ap += (recall - prev_recall) * precision
        prev_recall = recall
    return ap


def ref_eer_nearest(p, y):
    """DeepfakeBench: fpr[nanargmin(|fnr − fpr|)] on sklearn's default ROC (first minimum)."""
    fpr, tpr = ref_roc(p, y, drop_intermediate=True)
    best_i, best = 0, float("inf")
    for i in range(len(fpr)):
        gap = abs((1.0 - tpr[i]) - fpr[i])
        if gap < best:
            best_i, best = i, gap
    return fpr[best_i]


def ref_eer_interp(p, y):
    """Scan the full ROC polyline for the segment where FNR − FPR changes sign; solve the line."""
    fpr, tpr = ref_roc(p, y, drop_intermediate=False)
    for i in range(1, len(fpr)):
        d0 = (1.0 - tpr[i - 1]) - fpr[i - 1]
        d1 = (1.0 - tpr[i]) - fpr[i]
        if d1 == 0:
            return fpr[i]
        if d0 > 0 > d1:
            # FPR(s) = fpr0 + s Δfpr, FNR(s) = fnr0 + s Δfnr; equal when s = d0 / (d0 − d1)
            s = d0 / (d0 - d1)
            return fpr[i - 1] + s * (fpr[i] - fpr[i - 1])
    raise AssertionError("no crossing")


def ref_acc(p, y):
    return float(np.mean([(1 if pi > 0.5 else 0) == yi for pi, yi in zip(p, y)]))


def ref_frame_metrics(p, y):
    return {"auc": ref_auc_trapezoid(p, y), "ap": ref_ap(p, y), "eer": ref_eer_nearest(p, y),
            "eer_interp": ref_eer_interp(p, y), "acc": ref_acc(p, y)}


def ref_video(p, y, keys):
    """Mean probability and label per key, by a plain dict."""
    groups: dict = {}
    for pi, yi, k in zip(p, y, keys):
        groups.setdefault(k, []).append((float(pi), int(yi)))
    vp = [sum(a for a, _ in g) / len(g) for g in groups.values()]
    vy = [g[0][1] for g in groups.values()]
    return np.array(vp), np.array(vy)


def ref_all_metrics(p, y, keys=None):
    out = ref_frame_metrics(p, y)
    if keys is not None:
        vp, vy = ref_video(p, y, keys)
        v = ref_frame_metrics(vp, vy)
        out.update({"video_auc": v["auc"], "video_eer": v["eer"],
                    "video_eer_interp": v["eer_interp"], "video_acc": v["acc"]})
    return out
