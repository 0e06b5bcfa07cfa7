import pytest
import torch

from anogan.nets import Discriminator, Generator
from anogan.errors import InputError


@pytest.mark.parametrize("size", [28, 32, 64])
@pytest.mark.parametrize("channels", [1, 3])
def test_generator_and_discriminator_shapes(size, channels):
    G = Generator(size, channels, z_dim=20, width=8).eval()
    D = Discriminator(size, channels, width=8).eval()
    x = G(torch.rand(5, 20) * 2 - 1)
    assert x.shape == (5, channels, size, size)
    assert x.min() >= -1 and x.max() <= 1  # Tanh output
    assert D(x).shape == (5,)
    f = D.features(x)
    # default f(): the last block before the logit layer, 8 * 2**(n-1) channels at the smallest map
    s0 = 7 if size == 28 else 4
    n = len(D.blocks)
    assert f.shape == (5, 8 * 2 ** (n - 1) * s0 * s0)


@pytest.mark.parametrize("layer", [0, 1, -2])
def test_features_come_from_the_configured_layer(layer):
    D = Discriminator(32, 1, width=8, feature_layer=layer).eval()
    x = torch.rand(3, 1, 32, 32) * 2 - 1
    h = x
    for block in D.blocks[: (layer % 3) + 1]:
        h = block(h)
    torch.testing.assert_close(D.features(x), h.flatten(1))
    feats, logits = D.features_and_logits(x)
    torch.testing.assert_close(feats, h.flatten(1))
    torch.testing.assert_close(logits, D(x))


def test_paper_layout_at_64_pixels():
    G, D = Generator(64, 1), Discriminator(64, 1)
    convt = [m for m in G.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    strided = [m for m in convt if m.stride == (2, 2)]
    assert len(strided) == 4  # 4 fractionally-strided convolutions after the projection of z
    assert len(D.blocks) == 4  # 4 convolution blocks before the logit layer
    assert any(isinstance(m, torch.nn.Tanh) for m in G.modules())


def test_dcgan_initialisation():
    G = Generator(64, 1, width=64)
    w = torch.cat([m.weight.flatten() for m in G.modules() if isinstance(m, torch.nn.ConvTranspose2d)])
    assert abs(float(w.std()) - 0.02) < 0.002
    bn = torch.cat([m.weight for m in G.modules() if isinstance(m, torch.nn.BatchNorm2d)])
    assert abs(float(bn.mean()) - 1.0) < 0.01


def test_bad_sizes_are_rejected_with_the_fix():
    with pytest.raises(InputError, match=r"image_size=48 .*data.image_size"):
        Generator(48)
    with pytest.raises(InputError, match="channels=2"):
        Discriminator(32, 2)
    with pytest.raises(InputError, match=r"feature_layer=3 .*\[-3, 2\]"):
        Discriminator(32, 1, feature_layer=3)
