"""The spectral autoencoder (AutoencoderLogMel): its latents describe what is heard, so the clips of a class average
to the class's sound; it reconstructs through Griffin-Lim, its decode is differentiable and deterministic, and a
pipeline built on it saves, loads and samples like one built on the Gaussian DAC."""

import math

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline
from tiny_models import tiny_log_mel_vae, tiny_text_encoder, tiny_transformer

from recipes.procedural.evaluate import score
from recipes.procedural.sounds import synthesize
from recipes.procedural.train_codec import class_mean_share, fit_codec
from soundctm import AutoencoderLogMel, CTMScheduler, SoundCTMPipeline

RATE = 44100


def fading_tones(count: int, samples: int, seed: int = 0) -> torch.Tensor:
    """Tones at one pitch fading in by 30 dB, each at a random phase: `(count, 1, samples)`."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(samples) / RATE
    ramp = 10 ** (torch.linspace(-30, 0, samples) / 20)
    phases = torch.rand(count, 1, generator=g) * 2 * math.pi
    return (0.5 * ramp * torch.sin(2 * math.pi * 440.0 * t + phases))[:, None]


def test_tones_fading_in_at_random_phases_average_to_a_fade_in_the_latents():
    codec = tiny_log_mel_vae()
    tones = fading_tones(8, 64 * codec.hop_length)
    latents = codec.standardize(codec.encode(tones).latent_dist.mean)
    # In the waveform the clips cancel: their mean holds ~1/8 of their power (random phases).
    assert tones.mean(0).pow(2).mean() < 0.2 * tones.pow(2).mean()
    # In the latents they do not: the class mean is nearly all of it, and it rises with the fade.
    share = class_mean_share(latents, ["fade"] * 8)["fade"]
    assert share > 0.95
    level = codec.magnitudes(codec.unstandardize(latents.mean(0, keepdim=True))).pow(2).sum(1)[0]
    quarters = [q.mean() for q in level.tensor_split(4)]
    assert 10 * math.log10(quarters[-1] / quarters[0]) > 15  # the mean latent decodes to a fade


def test_a_fitted_codec_reconstructs_sounds_the_evaluator_still_recognises():
    codec = AutoencoderLogMel(latent_dim=48)
    rng = np.random.default_rng(0)
    classes = [{"source": "tone", "pitch": "high", "envelope": "fade_out"}, {"source": "sweep", "direction": "up"},
               {"source": "beeps", "pitch": "low", "rate": "slow"}, {"source": "noise", "colour": "rumble", "envelope": "fade_in"}]
    clips = np.stack([synthesize(c, rng) for c in classes for _ in range(3)])
    report = fit_codec(codec, (clips * 32767).astype(np.int16))
    assert report["explained_variance"] > 0.98
    prompts = ["a high tone fading out", "a rising sweep", "slow low beeps", "rumble fading in"]
    with torch.no_grad():
        z = codec.encode(torch.from_numpy(clips[::3].astype(np.float32))[:, None]).latent_dist.mean
        audio = codec.decode(z).sample
    assert audio.shape == (4, 1, clips.shape[-1])
    for clip, prompt in zip(audio[:, 0].numpy(), prompts):
        assert score(clip, prompt)[0], prompt


def test_decode_is_deterministic_and_differentiable():
    codec = tiny_log_mel_vae()
    z = codec.encode(fading_tones(2, 32 * codec.hop_length)).latent_dist.sample()
    first, again = codec.decode(z).sample, codec.decode(z.clone()).sample
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    z = z.clone().requires_grad_(True)
    loudness = codec.decode(z).sample.pow(2).mean()
    (grad,) = torch.autograd.grad(loudness, z)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    # the gradient predicts the change of a small step along it (the decode is smooth, not piecewise constant)
    step = 1e-3 * grad / grad.norm()
    with torch.no_grad():
        change = codec.decode(z + step).sample.pow(2).mean() - loudness
    assert change.item() == pytest.approx((grad * step).sum().item(), rel=0.2)


def test_latents_far_off_the_data_decode_to_finite_audio():
    """A sampler that diverges (EDM Heun in 2 steps did, on the demo teacher) must still give a waveform, not NaN."""
    codec = tiny_log_mel_vae()
    z = codec.encode(fading_tones(2, 32 * codec.hop_length)).latent_dist.mode()
    for scale in (1e2, 1e4):
        assert torch.isfinite(codec.decode(z * scale).sample).all()
    real = fading_tones(1, 32 * codec.hop_length)
    assert (codec.log_mel(real) < codec.log_mel_max).all()  # the bound never touches audio in [-1, 1]

def test_encode_gives_whole_latent_frames_and_a_noiseless_posterior():
    codec = tiny_log_mel_vae()
    posterior = codec.encode(torch.randn(3, 1, 10 * codec.hop_length + 5) * 0.1).latent_dist
    assert posterior.mean.shape == (3, codec.config.latent_dim, 11)  # right-padded to whole frames
    torch.testing.assert_close(posterior.sample(), posterior.mean)
    torch.testing.assert_close(codec.unstandardize(codec.standardize(posterior.mean)), posterior.mean)


def test_bad_input_and_configs_are_refused_with_the_argument_named():
    codec = tiny_log_mel_vae()
    with pytest.raises(ValueError, match=r"audio must have shape \(batch, 1, samples\)"):
        codec.encode(torch.randn(2, 2, 4096))
    with pytest.raises(ValueError, match="z must have shape"):
        codec.decode(torch.randn(1, codec.config.latent_dim + 1, 4))
    with pytest.raises(ValueError, match="stft_hop_length"):
        AutoencoderLogMel(n_fft=256, stft_hop_length=100)
    with pytest.raises(ValueError, match="latent_dim must be in"):
        AutoencoderLogMel(n_mels=8, frames_per_latent=1, latent_dim=9)
    with pytest.raises(ValueError, match="mono"):
        AutoencoderLogMel(audio_channels=2)
    with pytest.raises(ValueError, match="latents_std"):
        AutoencoderLogMel(latent_dim=4, latents_std=[1.0])


@pytest.fixture(scope="module")
def codec_pipe():
    codec = tiny_log_mel_vae()
    text_encoder, tokenizer, width = tiny_text_encoder("mean")
    pipe = SoundCTMPipeline(vae=codec, text_encoder=text_encoder, tokenizer=tokenizer,
                            transformer=tiny_transformer(width, in_channels=codec.config.latent_dim),
                            scheduler=CTMScheduler(), text_embedding="mean")  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sample(pipe):
    return pipe("a dog barks", num_inference_steps=2, nu=2.0, generator=torch.Generator().manual_seed(0)).audios


def test_a_pipeline_on_the_codec_saves_its_code_and_loads_three_ways(codec_pipe, tmp_path):
    import os

    reference = sample(codec_pipe)
    assert reference.shape == (1, 1, 16 * codec_pipe.vae.hop_length) and np.isfinite(reference).all()
    codec_pipe.save_pretrained(tmp_path)
    assert (tmp_path / "vae" / "autoencoder_log_mel.py").is_file()
    installed = SoundCTMPipeline.from_pretrained(tmp_path)
    assert isinstance(installed.vae, AutoencoderLogMel)
    torch.testing.assert_close(installed.vae.projection, codec_pipe.vae.projection)
    code_dir = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "pipelines", "soundctm")
    for loaded in (installed, DiffusionPipeline.from_pretrained(tmp_path, trust_remote_code=True),
                   DiffusionPipeline.from_pretrained(tmp_path, custom_pipeline=code_dir, trust_remote_code=True)):
        loaded.set_progress_bar_config(disable=True)
        np.testing.assert_allclose(sample(loaded), reference, rtol=1e-4, atol=1e-6)
