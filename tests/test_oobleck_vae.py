"""Stable Audio Open's stereo VAE behind the project's autoencoder interface (`AutoencoderOobleckSoundCTM`), on a
tiny `AutoencoderOobleck` built under a fixed seed."""

import pytest
import torch
from diffusers import AutoencoderOobleck

from soundctm import AutoencoderOobleckSoundCTM

TINY = dict(encoder_hidden_size=16, downsampling_ratios=[2, 4], channel_multiples=[1, 2], decoder_channels=4,
            decoder_input_channels=8, audio_channels=2)  # fmt: skip


@pytest.fixture(scope="module")
def saved_plain(tmp_path_factory):
    """A folder as diffusers saves Stable Audio Open's `vae/`: a plain AutoencoderOobleck."""
    torch.manual_seed(0)
    plain = AutoencoderOobleck(**TINY).eval()
    folder = tmp_path_factory.mktemp("oobleck")
    plain.save_pretrained(folder)
    return plain, folder


def test_a_stable_audio_vae_folder_loads_unchanged_and_gets_the_project_interface(saved_plain, tmp_path):
    plain, folder = saved_plain
    vae = AutoencoderOobleckSoundCTM.from_pretrained(folder).eval()
    assert vae.config.latent_dim == 8 and vae.hop_length == 8 and vae.config.sampling_rate == 44100
    assert vae.config.scaling_factor == 1.0  # Stable Audio Open's σ_d: the raw latents
    x = torch.randn(2, 2, 8 * 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        posterior = vae.encode(x).latent_dist
        torch.testing.assert_close(posterior.mean, plain.encode(x).latent_dist.mean, rtol=0, atol=0)
        assert posterior.mean.shape == (2, 8, 16) and posterior.std.shape == (2, 8, 16)
        assert vae.decode(posterior.mean).sample.shape == (2, 2, 8 * 16)
    assert torch.equal(vae.standardize(posterior.mean), posterior.mean)
    vae.register_to_config(latents_mean=[0.5] * 8, latents_std=[2.0] * 8)
    torch.testing.assert_close(vae.unstandardize(vae.standardize(posterior.mean)), posterior.mean)
    vae.save_pretrained(tmp_path / "ours")
    again = AutoencoderOobleckSoundCTM.from_pretrained(tmp_path / "ours")
    assert again.config.latents_std == [2.0] * 8 and again.config.latent_dim == 8


def test_inconsistent_configs_are_refused_by_name():
    with pytest.raises(ValueError, match="encoder_hidden_size"):
        AutoencoderOobleckSoundCTM(**{**TINY, "encoder_hidden_size": 12})
    with pytest.raises(ValueError, match="latent_dim"):
        AutoencoderOobleckSoundCTM(**TINY, latent_dim=4)
    with pytest.raises(ValueError, match="latents_std"):
        AutoencoderOobleckSoundCTM(**TINY, latents_std=[1.0])
