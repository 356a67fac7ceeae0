import pytest
import torch

from ganft.models.classifier import build_classifier
from ganft.models.gan import Discriminator, Generator, layout


@pytest.mark.parametrize("size,channels", [(8, 1), (28, 1), (32, 3), (64, 1)])
def test_generator_discriminator_classifier_shapes(size: int, channels: int) -> None:
    torch.manual_seed(0)
    G = Generator(channels=channels, size=size, num_classes=10, z_dim=16, width=8)
    D = Discriminator(channels=channels, size=size, num_classes=10, width=8)
    clfs = [build_classifier(arch, (channels, size, size), 10, width=8) for arch in ("seed-cnn", "mlp")]
    z, y = torch.randn(4, 16), torch.tensor([0, 3, 9, 3])
    x = G(z, y)
    assert x.shape == (4, channels, size, size)
    assert x.min() >= -1 and x.max() <= 1 and torch.isfinite(x).all()
    logits = D(x, y)
    assert logits.shape == (4,) and torch.isfinite(logits).all()
    for clf in clfs:
        out = clf(x)
        assert out.shape == (4, 10) and torch.isfinite(out).all()
        # logits, not probabilities: the seed article's Softmax-before-CrossEntropy bug stays fixed
        assert not torch.allclose(out.exp().sum(1), torch.ones(4))


def test_the_mlp_is_the_papers_network() -> None:
    # Salimans et al. 2016, MNIST: 784 -> 1000 -> 500 -> 250 -> 250 -> 250 -> 10, ReLU between
    clf = build_classifier("mlp", (1, 28, 28), 10, width=8)
    linears = [m for m in clf.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [
        (784, 1000), (1000, 500), (500, 250), (250, 250), (250, 250), (250, 10)]
    assert sum(isinstance(m, torch.nn.ReLU) for m in clf.trunk.modules()) == 5
    assert clf.trunk(torch.zeros(2, 1, 28, 28)).shape == (2, 250)


def test_layout_rejects_sizes_that_do_not_halve() -> None:
    assert layout(28) == (7, 2) and layout(32) == (4, 3) and layout(8) == (2, 2)
    with pytest.raises(ValueError, match="not supported"):
        layout(14)


def test_generator_conditioning_changes_output() -> None:
    torch.manual_seed(0)
    G = Generator(channels=1, size=28, num_classes=10, z_dim=16, width=8).eval()
    z = torch.randn(1, 16).repeat(2, 1)
    x = G(z, torch.tensor([0, 1]))
    assert not torch.allclose(x[0], x[1])


def test_unknown_variant_names_are_a_value_error_that_lists_the_known_ones() -> None:
    import pytest

    from ganft.models.gan import Discriminator, Generator

    with pytest.raises(ValueError, match=r"unknown conditioning 'film'; known: projection, acgan, none"):
        Generator(channels=1, size=8, num_classes=10, conditioning="film")
    with pytest.raises(ValueError, match=r"unknown conditioning 'film'; known: projection, acgan, none"):
        Discriminator(channels=1, size=8, num_classes=10, conditioning="film")
