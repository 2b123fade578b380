"""Pictures: counterfactual grid, ROC curves (written atomically)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from drivegpt.runs import atomic_path


def counterfactual_grid(path, rows: dict[str, tuple[np.ndarray, np.ndarray]], times: list[float], context: np.ndarray):
    """One figure: for each pose sequence (rows), predicted | ground truth at each time.

    rows: name -> (pred [T, H, W, 3], true [T, H, W, 3]) uint8 at ``times``; context: last context frame.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ncol = 1 + 2 * len(times)
    fig, axes = plt.subplots(len(rows), ncol, figsize=(2.2 * ncol, 1.4 * len(rows) + 0.4), squeeze=False)
    for r, (name, (pred, true)) in enumerate(rows.items()):
        axes[r, 0].imshow(context)
        axes[r, 0].set_ylabel(name, fontsize=8)
        for j, t in enumerate(times):
            axes[r, 1 + 2 * j].imshow(pred[j])
            axes[r, 2 + 2 * j].imshow(true[j])
            if r == 0:
                axes[r, 1 + 2 * j].set_title(f"pred {t:g}s", fontsize=8)
                axes[r, 2 + 2 * j].set_title(f"true {t:g}s", fontsize=8)
    axes[0, 0].set_title("context", fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return Path(path)


def roc_plot(path, probs, target, mask, horizons) -> Path:
    """ROC per horizon (causes pooled) with AUROC in the legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch
    from torchmetrics.functional.classification import binary_auroc, binary_roc

    probs, target, mask = (torch.as_tensor(x).float().reshape(-1, len(horizons), 3) for x in (probs, target, mask))
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    for i, h in enumerate(horizons):
        sel = mask[:, i] > 0
        p, y = probs[:, i][sel], target[:, i][sel].long()
        if y.numel() == 0 or y.min() == y.max():
            continue
        fpr, tpr, _ = binary_roc(p, y)
        ax.plot(fpr.numpy(), tpr.numpy(), label=f"{h:g} s (AUROC {float(binary_auroc(p, y)):.2f}, base {float(y.float().mean()):.3f})")
    ax.plot([0, 1], [0, 1], "k:", lw=1)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("disengagement (held out)")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return Path(path)
