"""``ganft pretrain STUDY``: train, once and into the store, every source checkpoint that the
study's ``classifier.init: pretrained`` points start from (trials only load them)."""

from __future__ import annotations

from ganft.study.schema import StudyConfig


def pretrain_study(study: StudyConfig, device_name: str = "auto") -> list[str]:
    """Train (once, cached) each checkpoint the study needs; one line per checkpoint."""
    from ganft.data import splits_for
    from ganft.pretrain import ensure_pretrained, pretrain_key
    from ganft.runtime import pick_device

    device = pick_device(device_name)
    needed = {}  # key -> (the classifier config that needs it, the target image shape)
    for point in study.points():
        trial = study.trial_config(point)
        if trial.classifier.init == "pretrained":
            shape = splits_for(trial.data).image_shape
            needed.setdefault(pretrain_key(trial.classifier, shape), (trial.classifier, shape))
    if not needed:
        return [f"study {study.name}: no grid point uses classifier.init pretrained; nothing to pretrain"]
    lines = []
    for key, (c, shape) in needed.items():
        _, metrics, trained = ensure_pretrained(c, shape, device)
        lines.append(f"{'trained' if trained else 'cached'} {key}: {c.arch} (width {c.width}) on "
                     f"{c.pretrained_source} at {'x'.join(map(str, shape))}, {c.pretrain_steps} steps, "
                     f"source val acc {metrics['pretrain/val_acc']:.3f}")
    return lines
