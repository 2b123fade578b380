"""Action-error statistics between two sets of actions (device artifact vs reference)."""

from __future__ import annotations

import numpy as np

QUANTILES = (0.5, 0.9, 0.95, 0.99)


def action_errors(pred: np.ndarray, ref: np.ndarray, action_range: float = 2.0, bins: int = 10) -> dict:
    """Distribution of |pred - ref| over all frames and both action dims (and per dim).

    action_range: width of the action interval (normalized actions in [-1, 1] -> 2); the
    ``*_frac`` figures are errors as a fraction of it.
    """
    pred, ref = np.asarray(pred, np.float64), np.asarray(ref, np.float64)
    if pred.shape != ref.shape or pred.ndim != 2:
        raise ValueError(f"action arrays must match as [N, 2]: got {pred.shape} vs {ref.shape}")
    err = np.abs(pred - ref)
    flat = err.reshape(-1)
    out = {"n": int(len(err)), "max": float(flat.max()), "mean": float(flat.mean()),
           "per_dim_max": err.max(axis=0).tolist(), "per_dim_mean": err.mean(axis=0).tolist()}
    for q in QUANTILES:
        out[f"p{int(q * 100)}"] = float(np.quantile(flat, q))
    out["p95_frac"] = out["p95"] / action_range
    out["max_frac"] = out["max"] / action_range
    hi = max(out["max"], 1e-12)
    counts, edges = np.histogram(flat, bins=bins, range=(0.0, hi))
    out["histogram"] = {"edges": edges.tolist(), "counts": counts.tolist()}
    return out
