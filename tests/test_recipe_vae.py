"""The demo recipe's VAE training pieces (recipes/procedural/train_vae.py): the data-dependent initialisation makes the
decoder depend on the latents, and the reconstruction losses rank a silent output, a DC offset and a loud whistle
below the right answer, which are the failure modes a small decoder trained on these sounds falls into."""

import math

import pytest
import torch

from recipes.procedural import train_vae
from soundctm import AutoencoderGaussianDAC

RATE = 44100


def tiny_vae():
    torch.manual_seed(0)
    return AutoencoderGaussianDAC(encoder_dim=4, encoder_rates=[2, 4], latent_dim=8, decoder_dim=16, decoder_rates=[4, 2])


def tones(n=4, samples=8192):
    t = torch.arange(samples) / RATE
    freqs = torch.tensor([220.0, 440.0, 1000.0, 2500.0])[:n, None]
    return (0.2 * torch.sin(2 * math.pi * freqs * t))[:, None]


def test_initialize_gives_unit_latents_and_a_decoder_that_uses_them():
    vae, x = tiny_vae(), tones()
    with torch.no_grad():
        before = vae.encode(x).latent_dist.mean.std().item()
    train_vae.initialize(vae, x, audio_std=0.1, log_variance=-8.0)
    with torch.no_grad():
        posterior = vae.encode(x).latent_dist
        z = posterior.mean
        y, y_zero = vae.decode(z).sample, vae.decode(torch.zeros_like(z)).sample
    assert before < 0.1
    assert z.std().item() == pytest.approx(1.0, rel=0.05)
    assert posterior.logvar.mean().item() == pytest.approx(-8.0, abs=1e-4)
    assert y.std().item() == pytest.approx(0.1, rel=0.3)
    assert (y - y_zero).std().item() > 0.5 * y.std().item()  # the output depends on the latents


@pytest.mark.parametrize("shape_loss", ["rescaled", "convergence"])
def test_reconstruction_losses_rank_the_failure_modes_below_the_answer(shape_loss):
    x = tones()
    t = torch.arange(x.shape[-1]) / RATE

    def total(pred):
        shape, level, offset = train_vae.reconstruction_losses(pred, x, shape_loss)
        return (shape + level + 10.0 * offset).item()

    right = total(x)
    assert right == pytest.approx(0.0, abs=1e-2)  # (the rescaled shape term centres the output)
    assert total(x + 0.3) > right + 0.05  # DC offset: the offset term
    assert total(1e-4 * x) > right + 1.0  # near silence: the level term (-66 dB costs 3.3 in log10 units)
    whistle = 0.05 * x + 0.2 * torch.sin(2 * math.pi * 17915.0 * t)
    assert total(whistle) > right + 0.3  # the energy at the wrong frequency
