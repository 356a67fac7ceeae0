"""GAN quality in a domain feature space, and how useful the images are (CAS).

Inception features say little about 28x28 greyscale clothes or 8x8 digits, and downloading weights
at run time is not allowed here, so every score is taken in the feature space of a small classifier
trained once per dataset on its whole training split (never the test split): its 128 penultimate
features. That classifier has seen labels a user with N images does not have, so these scores
report quality and never choose anything (the GAN's best step is chosen in selection.py, on
budget data). The extractor is cached on disk under a hash of everything that determines it
(dataset pool, recipe, EXTRACTOR_VERSION); the hash is the run tag ``quality.extractor_hash``, and
two scores are comparable only when their hashes match.

Scores, logged under ``quality/`` (generated images against the real test split):
- ``fcd``: Fréchet Classifier Distance, torchmetrics' FID with ``DomainFeatures`` as its feature
  module; ``fcd_class_{k}`` the same per class, for conditional generators;
- ``kid``: torchmetrics' KID (unbiased MMD, cubic kernel) in the same space;
- ``precision``, ``recall``, ``density``, ``coverage`` (Naeem et al., 2020), k nearest neighbours;
- ``cas``: Classification Accuracy Score (Ravuri & Vinyals, 2019): a classifier trained on generated
  images only (checkpoint chosen on held-out generated images) tested on the real test split;
- ``copy_rate``: the share of generated images that are copies of a budget training image: closer to
  their nearest training image of the same class than the ``quality.copy_percentile`` percentile of
  the same distance for real images the generator never saw (the test split), with that threshold
  as ``copy_threshold``. A generator that samples the data distribution without copying scores about
  the percentile (5 %); one that returns its training images scores 1. The trial's artifact
  ``nearest_train.png`` pairs the samples closest to a training image with that image.
"""

from __future__ import annotations

import logging
import math
import warnings
import weakref
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from ganft.config import ClassifierConfig, QualityConfig
from ganft.evaluate import accuracy, predict
from ganft.finetune import CLASSIFIER_VERSION, train_classifier
from ganft.images import Images, Splits
from ganft.labeller import helper_recipe
from ganft.models.gan import ConvTrunk
from ganft.paths import project_root
from ganft.runtime import derive_seed, make_generator, seeded
from ganft.store import CheckpointCache, content_key, images_digest, load_or_make
from ganft.synth import sample_synthetic
from ganft.tracker import NULL_TRACKER, Tracker, log_image_tensor

log = logging.getLogger(__name__)
CHUNK = 1000  # images per feature-extraction batch
COPY_FIGURE_PER_CLASS = 4  # samples (and their nearest training images) per class in nearest_train.png
# Bump when the extractor trained from the same split and recipe changes (DomainClassifier,
# train_extractor, models/gan.ConvTrunk): scores are then not comparable with earlier ones.
EXTRACTOR_VERSION = 1
# Bump when a generator's scores from the same extractor, samples and seed change (this file's
# trial_quality and the metrics it calls, synth.sample_synthetic): stored scores are then made again.
QUALITY_VERSION = 1


@dataclass(frozen=True)
class ExtractorRecipe:
    width: int = 32  # ConvTrunk width
    features: int = 128  # the feature space's dimension
    steps: int = 2000  # Adam steps on the training pool (Fashion-MNIST: ~4.7 epochs)
    batch_size: int = 128
    lr: float = 1e-3
    seed: int = 0


EXTRACTOR = ExtractorRecipe()  # fixed, so scores are comparable across studies


class DomainClassifier(nn.Module):
    """(B, C, S, S) -> (B, K) logits through ``features`` (B, F): conv trunk, linear + ReLU, linear."""

    def __init__(self, *, channels: int, size: int, num_classes: int, width: int, features: int) -> None:
        super().__init__()
        self.trunk = ConvTrunk(channels=channels, size=size, width=width, norm="batch")
        self.neck = nn.Sequential(nn.Linear(self.trunk.out_features, features), nn.ReLU())
        self.head = nn.Linear(features, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.neck(self.trunk(x))  # (B, F): what the class head sees

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class DomainFeatures(nn.Module):
    """torchmetrics' custom feature module: images (B, C, H, W) in [-1, 1] -> (B, F) features, always
    in eval mode and without autograd (``num_features`` spares torchmetrics a dummy forward pass)."""

    def __init__(self, model: DomainClassifier) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.num_features = model.head.in_features

    def train(self, mode: bool = True) -> DomainFeatures:
        return super().train(False)  # torchmetrics may call .train(); batch norm must stay frozen

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.features(x)


@dataclass
class Extractor:
    model: DomainClassifier  # eval mode, on the device it was asked for
    hash: str
    test_acc: float  # accuracy on the test split, a sanity check of the feature space (reported only)


# --------------------------------------------------------------------------- the extractor


def _build(splits: Splits, recipe: ExtractorRecipe) -> DomainClassifier:
    c, h, _ = splits.image_shape
    return DomainClassifier(channels=c, size=h, num_classes=splits.num_classes, width=recipe.width,
                            features=recipe.features)


def train_extractor(splits: Splits, recipe: ExtractorRecipe, device: torch.device) -> DomainClassifier:
    """Adam on cross-entropy over the dataset's whole training split."""
    with seeded(derive_seed(recipe.seed, "extractor-init")):
        model = _build(splits, recipe).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=recipe.lr)
    gen = make_generator(derive_seed(recipe.seed, "extractor-batches"), device)
    pool = splits.train.to(device)
    model.train()
    for _ in range(recipe.steps):
        idx = torch.randint(len(pool), (recipe.batch_size,), generator=gen, device=device)
        loss = F.cross_entropy(model(pool.x[idx]), pool.y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.eval()


_HASHES: dict[tuple[int, ExtractorRecipe], tuple[weakref.ref, str]] = {}  # id(pool.x) -> (pool.x, hash)
_LOADED: dict[tuple[str, str, str], Extractor] = {}


def extractor_hash(splits: Splits, recipe: ExtractorRecipe) -> str:
    """The key of what determines the extractor: the training split's bytes, the recipe and the
    extractor's code (first 16 hex)."""
    memo = (id(splits.train.x), recipe)
    ref, digest = _HASHES.get(memo, (None, ""))
    if ref is None or ref() is not splits.train.x:  # an id can be reused once a tensor is freed
        digest = content_key({"dataset": splits.name, "recipe": asdict(recipe),
                              "data": images_digest(splits.train), "version": EXTRACTOR_VERSION})
        _HASHES[memo] = (weakref.ref(splits.train.x), digest)
    return digest


def load_extractor(splits: Splits, device: torch.device, recipe: ExtractorRecipe | None = None) -> Extractor:
    """The dataset's feature extractor (``EXTRACTOR`` unless another recipe is given): from memory,
    else from the on-disk cache, else trained now and cached (one worker trains it; others wait on
    the key's lock, then load it)."""
    recipe = recipe or EXTRACTOR
    key = extractor_hash(splits, recipe)
    cache = CheckpointCache(project_root() / ".ganft-cache" / "quality")
    memo = (str(cache.dir), key, str(device))
    if memo in _LOADED:
        return _LOADED[memo]
    with cache.lock(key):
        entry = cache.load(key)
        if entry is None:
            log.info("training the %s feature extractor %s (%d images, %d steps)", splits.name, key,
                     len(splits.train), recipe.steps)
            model = train_extractor(splits, recipe, device)
            test_acc = accuracy(model, splits.test.to(device))
            cache.save(key, {"state_dict": {k: v.cpu() for k, v in model.state_dict().items()},
                             "test_acc": test_acc, "dataset": splits.name})
        else:
            model = _build(splits, recipe)
            model.load_state_dict(entry["state_dict"])
            model, test_acc = model.to(device).eval(), float(entry["test_acc"])
    _LOADED[memo] = Extractor(model, key, test_acc)
    return _LOADED[memo]


# --------------------------------------------------------------------------- scores


def _update(metric: FrechetInceptionDistance | KernelInceptionDistance, x: torch.Tensor, real: bool) -> None:
    for chunk in x.split(CHUNK):
        metric.update(chunk, real=real)


def fcd(ext: Extractor, real: torch.Tensor, fake: torch.Tensor) -> float:
    """Fréchet distance between the domain features of two image sets (N, C, H, W) in [-1, 1]."""
    metric = FrechetInceptionDistance(feature=DomainFeatures(ext.model)).to(real.device)
    _update(metric, real, True)
    _update(metric, fake, False)
    return float(metric.compute())


def kid(ext: Extractor, real: torch.Tensor, fake: torch.Tensor, *, seed: int = 0,
        subsets: int = 50) -> tuple[float, float]:
    """KID mean and standard deviation over ``subsets`` random subsets (of up to 1000 per side)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        metric = KernelInceptionDistance(feature=DomainFeatures(ext.model), subsets=subsets,
                                         subset_size=min(1000, len(real), len(fake))).to(real.device)
    _update(metric, real, True)
    _update(metric, fake, False)
    with seeded(derive_seed(seed, "kid")):  # torchmetrics draws the subsets from the global RNG
        mean, std = metric.compute()
    return float(mean), float(std)


@torch.inference_mode()
def features(ext: Extractor, x: torch.Tensor) -> torch.Tensor:
    return torch.cat([ext.model.features(chunk) for chunk in x.split(CHUNK)])  # (N, F)


def prdc(real: torch.Tensor, fake: torch.Tensor, k: int = 5) -> dict[str, float]:
    """Precision, recall, density and coverage (Naeem et al., 2020) of feature sets (R, F), (G, F).

    A real point's ball has the radius of its k-th nearest real neighbour. Precision: share of fakes
    inside some real ball; recall: share of reals inside some fake ball (fake radii likewise);
    density: mean count of real balls holding a fake, / k; coverage: share of real balls holding a
    fake. Written here in a few lines of torch: torchmetrics has no such metric, and the reference
    ``prdc`` package (numpy, unmaintained since 2020) would add a dependency for the same formulas.
    """
    def dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.cdist(a.double(), b.double(), compute_mode="donot_use_mm_for_euclid_dist")

    r_real = dist(real, real).kthvalue(k + 1, dim=1).values  # (R,): the 1st nearest is the point itself
    r_fake = dist(fake, fake).kthvalue(k + 1, dim=1).values  # (G,)
    d = dist(real, fake)  # (R, G)
    in_real_ball = d < r_real[:, None]  # (R, G)
    return {"precision": in_real_ball.any(0).double().mean().item(),
            "recall": (d < r_fake[None, :]).any(1).double().mean().item(),
            "density": in_real_ball.sum(0).double().mean().item() / k,
            "coverage": (d.min(1).values < r_real).double().mean().item()}


def generator_quality(ext: Extractor, real: Images, fake: Images, *, k: int = 5, per_class: bool = True,
                      seed: int = 0) -> dict[str, float]:
    """``quality/`` scores of labelled generated images against labelled real ones (same device)."""
    out = {"quality/fcd": fcd(ext, real.x, fake.x)}
    out["quality/kid"], out["quality/kid_std"] = kid(ext, real.x, fake.x, seed=seed)
    # precision & co. compare point clouds of equal size: the real side is subsampled to the fake count
    keep = torch.randperm(len(real), generator=make_generator(derive_seed(seed, "prdc")))[: len(fake)]
    scores = prdc(features(ext, real.x[keep.to(real.x.device)]), features(ext, fake.x), k)
    out.update({f"quality/{name}": v for name, v in scores.items()})
    if per_class:  # conditional generators: each class against the real images of that class
        for c in range(int(real.y.max()) + 1):
            out[f"quality/fcd_class_{c}"] = fcd(ext, real.x[real.y == c], fake.x[fake.y == c])
    return out


@dataclass
class Copies:
    rate: float  # share of samples nearer their nearest same-class training image than ``threshold``
    threshold: float  # the percentile of the reference images' nearest-training-image distances
    distance: torch.Tensor  # (G,) each sample's distance to its nearest training image of its class
    nearest: torch.Tensor  # (G,) that training image's index (-1: no training image of the class)


def nearest_same_class(query_f: torch.Tensor, query_y: torch.Tensor, train_f: torch.Tensor,
                       train_y: torch.Tensor, *,
                       leave_one_out: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Per query (Q, F): the Euclidean distance to the nearest training feature (T, F) of the same
    class and its index (inf and -1 where the class has no training image). ``leave_one_out``: the
    queries are the training images themselves, each compared with the others only."""
    dist = torch.full((len(query_f),), math.inf, dtype=torch.float64, device=query_f.device)
    index = torch.full((len(query_f),), -1, dtype=torch.long, device=query_f.device)
    for c in query_y.unique().tolist():
        q, t = (query_y == c).nonzero().squeeze(1), (train_y == c).nonzero().squeeze(1)
        if len(t) == 0:
            continue
        d = torch.cdist(query_f[q].double(), train_f[t].double(), compute_mode="donot_use_mm_for_euclid_dist")
        if leave_one_out:
            d.fill_diagonal_(math.inf)  # query q[i] is training image t[i]
        best = d.min(1)
        dist[q], index[q] = best.values, torch.where(best.values.isfinite(), t[best.indices], -1)
    return dist, index


def copies(train_f: torch.Tensor, train_y: torch.Tensor, fake_f: torch.Tensor, fake_y: torch.Tensor,
           reference_f: torch.Tensor | None = None, reference_y: torch.Tensor | None = None, *,
           percentile: float = 5.0) -> Copies:
    """Which generated images are copies of a training image (features and labels of each set).
    The threshold comes from the real data itself: the ``percentile`` of the distances from real
    images the generator never saw (``reference``) to their nearest training image of the same class,
    so a fresh real image counts as a copy with probability percentile / 100. Without a reference
    (budget data only, for choices) each training image is held out against the others."""
    if reference_f is None:
        ref, _ = nearest_same_class(train_f, train_y, train_f, train_y, leave_one_out=True)
    else:
        ref, _ = nearest_same_class(reference_f, reference_y, train_f, train_y)
    ref = ref[ref.isfinite()]
    threshold = torch.quantile(ref, percentile / 100).item() if len(ref) else math.nan
    dist, index = nearest_same_class(fake_f, fake_y, train_f, train_y)
    rate = (dist < threshold).double().mean().item() if len(dist) and threshold == threshold else math.nan
    return Copies(rate, threshold, dist, index)


def nearest_pairs(fake: Images, train: Images, found: Copies, classes: tuple[str, ...] | list[str],
                  per_class: int = 4) -> tuple[torch.Tensor, list[str]]:
    """The copy figure's rows: per class, the ``per_class`` samples nearest a training image (most
    copy-like first), then the training images they are nearest to (blank tiles where a class has
    fewer). Returns (2K * per_class, C, H, W) images and the row labels."""
    rows, labels = [], []
    shape = fake.x.shape[1:]
    for k, name in enumerate(classes):
        mine = ((fake.y == k) & (found.nearest >= 0)).nonzero().squeeze(1)
        mine = mine[found.distance[mine].argsort()[:per_class]]
        blank = torch.ones((per_class - len(mine), *shape), dtype=fake.x.dtype, device=fake.x.device)
        near = train.x[found.nearest[mine].to(train.x.device)].to(fake.x)
        rows += [torch.cat([fake.x[mine], blank]), torch.cat([near, blank])]
        labels += [f"{name} (sample)", f"{name} (nearest train)"]
    return torch.cat(rows), labels


def cas(recipe: ClassifierConfig, synthetic: Images, test: Images, num_classes: int, *, seed: int,
        device: torch.device) -> float:
    """Test accuracy of the trial's classifier recipe trained from scratch on generated images only;
    its best checkpoint is chosen on a held-out tenth of them, so no real image is seen before the test."""
    order = torch.randperm(len(synthetic), generator=make_generator(derive_seed(seed, "cas")))
    n_hold = max(len(synthetic) // 10, num_classes)
    hold, train = synthetic.take(order[:n_hold]), synthetic.take(order[n_hold:])
    res = train_classifier(helper_recipe(recipe), train, hold, num_classes, seed=seed, device=device)
    return accuracy(res.model, test.to(device))


# --------------------------------------------------------------------------- trial stages


@dataclass(frozen=True)
class KeptAs:
    """Where a generator's scores are kept, and what determines them beyond the trial's recipes:
    the keys of the generator and, for an unconditional one, of its labeller."""

    store: CheckpointCache
    ident: dict[str, Any]


def trial_quality(cfg: QualityConfig, generator: nn.Module, labeller: Callable[[], nn.Module] | None,
                  splits: Splits, *, cas_recipe: ClassifierConfig, seed: int, device: torch.device,
                  tracker: Tracker = NULL_TRACKER, budget_train: Images | None = None,
                  kept: KeptAs | None = None) -> dict[str, float]:
    """All ``quality/`` scores of a trial's generator (empty when ``quality.enabled`` is off).
    A conditional generator (``labeller`` None) is scored with the labels it was asked for (uniform
    over classes); an unconditional one on its own class mix, with the real-subset ``labeller``'s most
    probable class as the label (no threshold), so its CAS measures generator and labeller together.
    CAS trains ``cas_recipe``, the trial's classifier recipe. With ``budget_train`` (the budget's
    training images) also the copy rate and its figure ``nearest_train.png``.

    With ``kept``, the scores are kept in its store and the next trial of the same generator (another
    ratio of a grid) reads them instead of sampling, scoring and training CAS again: the same
    numbers, since every draw is seeded (``quality/cached`` 1)."""
    if not cfg.enabled:
        return {}
    ext = load_extractor(splits, device)
    tracker.set_tags({"quality.extractor_hash": ext.hash})

    def score() -> dict[str, Any]:
        return _score(cfg, generator, labeller, splits, ext, cas_recipe=cas_recipe, seed=seed, device=device,
                      budget_train=budget_train)

    if kept is None:
        scored, hit = score(), False
    else:
        key = content_key({"role": "quality", "version": [QUALITY_VERSION, CLASSIFIER_VERSION], **kept.ident,
                           "quality": cfg.model_dump(mode="json"), "cas": cas_recipe.model_dump(mode="json"),
                           "seed": seed, "extractor": ext.hash, "conditional": labeller is None,
                           "budget": images_digest(budget_train), "test": images_digest(splits.test)})
        scored, hit = load_or_make(kept.store, key, score)
    if scored["figure_labels"]:
        log_image_tensor(tracker, scored["figure"], "nearest_train.png", nrow=COPY_FIGURE_PER_CLASS,
                         row_labels=list(scored["figure_labels"]))
    return {**scored["metrics"], **({"quality/cached": float(hit)} if kept is not None else {})}


def _score(cfg: QualityConfig, generator: nn.Module, labeller: Callable[[], nn.Module] | None, splits: Splits,
           ext: Extractor, *, cas_recipe: ClassifierConfig, seed: int, device: torch.device,
           budget_train: Images | None) -> dict[str, Any]:
    """``trial_quality``'s scores and copy figure (rows, labels; empty without ``budget_train``)."""
    n, seed_q, K = cfg.num_samples, derive_seed(seed, "quality"), splits.num_classes
    fake = sample_synthetic(generator, n, K, seed=seed_q, device=device)  # uniform labels, if conditional
    if labeller is not None:  # unconditional: its own class mix, each image labelled by the labeller's argmax
        fake = Images(fake.x, predict(labeller(), fake.x).to(device))
    test = splits.test.to(device)
    out = generator_quality(ext, test, fake, k=cfg.k, per_class=labeller is None, seed=seed_q)
    out["quality/cas"] = cas(cas_recipe, fake, test, K, seed=seed, device=device)
    out["quality/extractor_test_acc"] = ext.test_acc
    rows, labels = torch.zeros(0), []
    if budget_train is not None:
        train = budget_train.to(device)
        found = copies(features(ext, train.x), train.y, features(ext, fake.x), fake.y,
                       features(ext, test.x), test.y, percentile=cfg.copy_percentile)
        out["quality/copy_rate"], out["quality/copy_threshold"] = found.rate, found.threshold
        rows, labels = nearest_pairs(fake, train, found, splits.classes, COPY_FIGURE_PER_CLASS)
    return {"metrics": {k: float(v) for k, v in out.items()}, "figure": rows.cpu(), "figure_labels": labels}
