"""Accuracy, macro-F1, per-class accuracy and a confusion-matrix figure for a classifier, and the
continuous scores a held-out fold is judged by (log-loss, mean true-class probability)."""

from __future__ import annotations

import numpy as np
import torch
from matplotlib.figure import Figure
from sklearn.metrics import ConfusionMatrixDisplay, accuracy_score, confusion_matrix, f1_score, log_loss
from torch import nn

from ganft.catalog import plot_label
from ganft.images import Images
from ganft.runtime import autocast, eval_batch_size


@torch.inference_mode()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
    """Predicted class indices (N,) on the CPU, in large batches with no autograd bookkeeping."""
    model.eval()
    batch_size = batch_size or eval_batch_size(x.device)
    with autocast(x.device):
        return torch.cat([model(chunk).argmax(dim=1).cpu() for chunk in x.split(batch_size)])


@torch.inference_mode()
def probabilities(model: nn.Module, x: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
    """Class probabilities (N, K) on the CPU, float32 (softmax of fp32 logits)."""
    model.eval()
    batch_size = batch_size or eval_batch_size(x.device)
    with autocast(x.device):
        return torch.cat([model(c).float().softmax(dim=1).cpu() for c in x.split(batch_size)])


def held_out_scores(model: nn.Module, images: Images, num_classes: int) -> dict[str, float]:
    """Continuous scores on held-out images, which resolve what accuracy on a few images cannot:
    ``log_loss`` (scikit-learn's, lower is better), ``true_class_prob`` (the mean probability given
    to the right class, higher is better) and ``acc``."""
    probs = probabilities(model, images.x).double().numpy()
    probs /= probs.sum(axis=1, keepdims=True)  # float32 softmax sums are 1 only to ~1e-7
    y = images.y.cpu().numpy()
    return {"log_loss": float(log_loss(y, probs, labels=np.arange(num_classes))),
            "true_class_prob": float(probs[np.arange(len(y)), y].mean()),
            "acc": float((probs.argmax(axis=1) == y).mean())}


def accuracy(model: nn.Module, images: Images) -> float:
    return (predict(model, images.x) == images.y.cpu()).double().mean().item()


def test_metrics(model: nn.Module, test: Images, classes: tuple[str, ...]) -> tuple[dict[str, float], Figure]:
    """``test/acc``, ``test/macro_f1`` and ``test/acc_class_<k>``, plus the confusion matrix figure."""
    y_true = test.y.cpu().numpy()
    y_pred = predict(model, test.x).numpy()
    labels = np.arange(len(classes))
    cm = confusion_matrix(y_true, y_pred, labels=labels)
    per_class = cm.diagonal() / np.maximum(cm.sum(axis=1), 1)
    metrics = {"test/acc": float(accuracy_score(y_true, y_pred)),
               "test/macro_f1": float(f1_score(y_true, y_pred, average="macro", labels=labels,
                                               zero_division=0))}
    metrics.update({f"test/acc_class_{k}": float(a) for k, a in enumerate(per_class)})
    return metrics, confusion_figure(cm, classes)


def confusion_figure(cm: np.ndarray, classes: tuple[str, ...]) -> Figure:
    fig = Figure(figsize=(6.5, 5.5), dpi=110, layout="constrained")
    ax = fig.subplots()
    ConfusionMatrixDisplay(cm, display_labels=[plot_label(c) for c in classes]).plot(ax=ax, colorbar=False,
                                                                  xticks_rotation=45)
    ax.set_title(f"Test confusion matrix (accuracy {cm.trace() / max(cm.sum(), 1):.3f})")
    return fig
