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
    """ROC per cause (STEER, BRAKE, GAS) at the 2 s horizon (or the nearest one), and "any
    cause" per horizon. Causes are never pooled into one ranking (each head has its own
    calibration)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch
    from torchmetrics.functional.classification import binary_auroc, binary_roc

    from drivegpt.world_model.metrics import CAUSES, _any_cause

    probs, target, mask = (torch.as_tensor(x).float().reshape(-1, len(horizons), 3) for x in (probs, target, mask))
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.5))

    def curve(ax, p, y, label, **kw):
        y = y.long()
        if y.numel() == 0 or y.min() == y.max():
            return
        fpr, tpr, _ = binary_roc(p, y)
        ax.plot(fpr.numpy(), tpr.numpy(), label=f"{label} (AUROC {float(binary_auroc(p, y)):.2f}, "
                f"{int(y.sum())} pos)", **kw)

    i2 = min(range(len(horizons)), key=lambda i: abs(horizons[i] - 2.0))
    for c, name in enumerate(CAUSES):
        sel = mask[:, i2, c] > 0
        curve(axes[0], probs[:, i2, c][sel], target[:, i2, c][sel], name)
    axes[0].set_title(f"per cause, {horizons[i2]:g} s (held out)")
    for i, h in enumerate(horizons):
        p, y, known = _any_cause(probs[:, i], target[:, i], mask[:, i])
        curve(axes[1], p[known], y[known], f"{h:g} s")
    axes[1].set_title("any cause, per horizon (held out)")
    for ax in axes:
        ax.plot([0, 1], [0, 1], "k:", lw=1)
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return Path(path)


def confusion_plot(path, conf, conf_zeroed, commands) -> Path:
    """Command-following confusion matrices (row = commanded, column = nearest replay), the
    model beside the same model with its pose conditioning removed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    mats = [("world model", np.asarray(conf))]
    if conf_zeroed is not None:
        mats.append(("pose zeroed", np.asarray(conf_zeroed)))
    fig, axes = plt.subplots(1, len(mats), figsize=(3.6 * len(mats), 3.4), squeeze=False)
    for ax, (title, m) in zip(axes[0], mats):
        ax.imshow(m, cmap="Blues", vmin=0, vmax=max(1, m.sum(1).max()))
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                ax.text(j, i, int(m[i, j]), ha="center", va="center", fontsize=9)
        acc = np.trace(m) / max(1, m.sum())
        ax.set_title(f"{title}: acc {acc:.2f} (chance {1 / len(commands):.2f})", fontsize=9)
        ax.set_xticks(range(len(commands)), commands, fontsize=8, rotation=30)
        ax.set_yticks(range(len(commands)), commands, fontsize=8)
        ax.set_xlabel("nearest replay")
        ax.set_ylabel("commanded")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return Path(path)


def following_plot(path, by_step: dict[str, list[list[float]]], dt: float) -> Path:
    """Pose following along the rollout: the ruler's yaw-rate and lateral R^2 against the commanded
    move at each future frame, for each reading (``by_step[name] = [yaw list, lateral list]``: the
    world model, the road world's replay of the same moves, the pose-zeroed model)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    for k, (ax, q) in enumerate(zip(axes, ("yaw rate", "lateral"))):
        for name, series in by_step.items():
            t = [dt * (j + 1) for j in range(len(series[k]))]
            ax.plot(t, series[k], marker="o", ms=3, label=name)
        ax.axhline(0.0, color="grey", lw=0.5)
        ax.set_ylim(-1.0, 1.05)
        ax.set_xlabel("seconds after the context")
        ax.set_ylabel(f"{q} R^2")
        ax.set_title(f"pose following: {q}", fontsize=9)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return Path(path)
