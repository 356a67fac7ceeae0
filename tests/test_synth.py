import pytest
import torch

from ganft.models.gan import Generator
from ganft.runtime import make_generator
from ganft.synth import class_counts, sample_synthetic, synthetic_count


@pytest.mark.parametrize("ratio,n_real,expected", [(0, 50, 0), (1, 50, 50), (0.5, 101, 50),
                                                   (0.5, 103, 52), (4, 200, 800), (2.5, 7, 18)])
def test_synthetic_count_is_round_ratio_times_n(ratio: float, n_real: int, expected: int) -> None:
    assert synthetic_count(ratio, n_real) == expected


@pytest.mark.parametrize("n", [0, 7, 10, 53, 200])
def test_class_counts_are_exact_and_balanced(n: int) -> None:
    counts = class_counts(n, 10, make_generator(0))
    assert counts.sum() == n and counts.max() - counts.min() <= (1 if n % 10 else 0)


def _generator() -> Generator:
    torch.manual_seed(0)
    return Generator(channels=1, size=8, num_classes=10, z_dim=8, width=8)


def test_synthetic_set_has_exact_count_balance_and_labels() -> None:
    s = sample_synthetic(_generator(), 53, 10, seed=1, device=torch.device("cpu"))
    assert s.x.shape == (53, 1, 8, 8) and s.y.shape == (53,)
    counts = torch.bincount(s.y, minlength=10)
    assert counts.sum() == 53 and counts.max() - counts.min() == 1
    assert not s.x.is_inference()  # usable in a training step


def test_same_seed_same_bits_other_seed_other_images() -> None:
    G = _generator()
    a = sample_synthetic(G, 40, 10, seed=5, device=torch.device("cpu"))
    b = sample_synthetic(G, 40, 10, seed=5, device=torch.device("cpu"))
    c = sample_synthetic(G, 40, 10, seed=6, device=torch.device("cpu"))
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert not torch.equal(a.x, c.x)


def test_samples_are_drawn_in_inference_mode_without_grad() -> None:
    s = sample_synthetic(_generator(), 10, 10, seed=0, device=torch.device("cpu"))
    assert not s.x.requires_grad
