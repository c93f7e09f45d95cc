"""The demo recipe's VAE training pieces (recipes/procedural/train_vae.py): the data-dependent initialisation makes the
decoder depend on the latents, and the reconstruction losses rank a silent output, a DC offset and a loud whistle
below the right answer, which are the failure modes a small decoder trained on these sounds falls into."""

import math

import numpy as np

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


def test_identity_residuals_start_every_residual_unit_as_the_identity():
    vae, x = tiny_vae(), tones()
    train_vae.initialize(vae, x, audio_std=0.1, identity_residuals=True)
    units = [m for m in vae.modules() if type(m).__name__ == "ResidualUnit"]
    assert units
    with torch.no_grad():
        for unit in units:
            h = torch.randn(2, unit.block[1].in_channels, 64)
            torch.testing.assert_close(unit(h), h)
        y = vae.decode(vae.encode(x).latent_dist.mean).sample
    assert torch.isfinite(y).all()
    assert y.std().item() == pytest.approx(0.1, rel=0.3)  # the rescaling skips the zeroed convolutions


def test_linear_start_makes_the_vae_a_perfect_reconstruction_lapped_transform():
    """With a full orthonormal basis the sine-windowed lapped transform reconstructs exactly, so the VAE started from
    it reconstructs its input at once (up to its nearly linear Snake and tanh), before any training."""
    torch.manual_seed(0)
    vae = AutoencoderGaussianDAC(encoder_dim=4, encoder_rates=[2, 4], latent_dim=16, decoder_dim=16, decoder_rates=[4, 2])
    basis = torch.linalg.qr(torch.randn(16, 16))[0].numpy()
    train_vae.linear_start(vae, basis)
    x = 0.05 * tones(samples=512)
    with torch.no_grad():
        posterior = vae.encode(x).latent_dist
        y = vae.decode(posterior.mean).sample
    inner = slice(16, -16)  # the first and last half window see zero padding
    error = (y - x)[..., inner].pow(2).mean() / x[..., inner].pow(2).mean()
    assert error.item() < 1e-4
    assert posterior.logvar.mean().item() == pytest.approx(-8.0)


def test_pca_filterbank_keeps_the_energy_of_a_tone_in_its_leading_rows():
    audio = (0.3 * 32768 * tones(n=1, samples=8192)[0].numpy()).astype("int16")
    basis = train_vae.pca_filterbank(audio, hop=8, count=4, windows=512)
    assert basis.shape == (4, 16)
    torch.testing.assert_close(torch.from_numpy(basis @ basis.T), torch.eye(4, dtype=torch.float64))


def test_linear_start_names_the_block_that_lacks_channels():
    vae = AutoencoderGaussianDAC(encoder_dim=1, encoder_rates=[4, 4], latent_dim=8, decoder_dim=16, decoder_rates=[4, 4])
    with pytest.raises(ValueError, match="encoder block 0 needs 4 channels"):
        train_vae.linear_start(vae, np.zeros((8, 32)))


def test_latent_distance_is_zero_for_the_same_sound_and_near_one_for_unrelated_noise():
    vae = tiny_vae()
    rng = np.random.default_rng(0)
    clips = [0.3 * rng.standard_normal(8192).astype(np.float32) for _ in range(3)]
    same = train_vae.latent_distance(vae, clips, clips)
    assert np.allclose(same, 0.0, atol=1e-5)
    louder = train_vae.latent_distance(vae, clips, [0.9 * c for c in clips])  # the same sound a little quieter
    unrelated = train_vae.latent_distance(vae, clips, clips[1:] + clips[:1])
    assert max(louder) < 0.1
    assert min(unrelated) > 0.5


def test_gain_channel_puts_a_fade_in_one_channels_mean_and_decodes_as_the_plain_codec():
    """The gain-shape split (AutoencoderGaussianDAC(gain_channel=True)): tones fading in at random phases average to
    ~0 in a linear codec's channels (the fade is only in their variance), while the gain channel rises with the fade
    in every clip alike; decoding multiplies the split back, so the output is the plain codec's."""
    kwargs = dict(encoder_dim=4, encoder_rates=[2, 4], decoder_dim=16, decoder_rates=[4, 2])
    torch.manual_seed(0)
    basis = torch.linalg.qr(torch.randn(16, 16))[0].numpy()
    plain = AutoencoderGaussianDAC(latent_dim=16, **kwargs)
    split = AutoencoderGaussianDAC(latent_dim=17, gain_channel=True, gain_floor=1e-3, **kwargs)
    for vae in (plain, split):
        train_vae.linear_start(vae, basis)
    assert split.codec_dim == 16
    samples, rng = 2048, np.random.default_rng(0)
    t = torch.arange(samples) / RATE
    ramp = 10 ** (torch.linspace(-30, 0, samples) / 20)  # 30 dB, linear in dB
    x = torch.stack([0.3 * ramp * torch.sin(2 * math.pi * 3000 * t + rng.uniform(0, 2 * math.pi)) for _ in range(64)])[:, None]
    with torch.no_grad():
        z_plain, z_split = plain.encode(x).latent_dist.mean, split.encode(x).latent_dist.mean
        torch.testing.assert_close(split.decode(z_split).sample, plain.decode(z_plain).sample, atol=1e-6, rtol=1e-4)
        torch.testing.assert_close(split.codec_latents(z_split), z_plain, atol=1e-6, rtol=1e-4)
    inner = slice(4, -4)  # frames that see no zero padding

    def class_mean_share(z):
        z = z[..., inner]
        return (z.mean(0).pow(2).sum() / z.pow(2).mean(0).sum()).item()

    gain = z_split[:, 0, inner]
    assert class_mean_share(z_plain) < 0.05  # (1/64 expected from the finite sample)
    assert gain.mean(0)[-1] - gain.mean(0)[0] > 0.9 * math.log(10 ** (30 / 20)) * (1 - 8 / (samples / 8))  # 30 dB less the padded frames
    assert gain.std(0).max() < 0.1  # the same curve in every clip: it is the class mean, not a variance
    assert torch.all(gain.mean(0).diff() > 0)
