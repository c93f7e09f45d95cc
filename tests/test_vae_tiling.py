"""The Gaussian DAC's chunked inference (`enable_tiling`, on by default): each up- or downsampling block is run over
time chunks with its receptive field as overlap, which must give the one-pass decode and encode (up to float rounding)
for any length, batch and chunk size, leave the differentiable path (loss-based guidance) as it is, and change no
pipeline output beyond 1e-4 (the speed issue's tolerance, used throughout: a halo too small is off by O(1), and
float rounding on the tiny saturating models here reaches a few 1e-5 for some weight draws). Its speed and memory are measured by benchmarks/bench_vae.py, not here."""

import pytest
import torch
from tiny_models import tiny_pipeline, tiny_vae

from soundctm import autoencoder_gaussian_dac
from soundctm.autoencoder_gaussian_dac import apply_in_chunks


def relative(a, b):
    return float((a - b).abs().max() / b.abs().max())


def perturbed_vae(seed, offset):
    """A tiny DAC (three up/down blocks) with every weight and α away from its init, so that no layer is near the
    identity."""
    vae = tiny_vae(seed=seed, decoder_rates=[4, 2, 2], encoder_rates=[2, 2, 4], decoder_dim=32)
    with torch.no_grad():
        for p in vae.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel() + offset)))
    return vae


def one_pass_and_chunked(vae, run, chunk, chunks):
    with torch.no_grad():
        vae.disable_tiling()
        plain = run()
        assert not chunks  # the one-pass setting makes no chunked call
        vae.enable_tiling(chunk_elements=chunk)
        return plain, run()


def count_chunks(monkeypatch) -> list[int]:
    """The number of chunks of every `apply_in_chunks` call the VAE makes, appended as it runs."""
    chunks, original = [], autoencoder_gaussian_dac.apply_in_chunks

    def counting(fn, x, scale, halo, size, down=1):
        chunks.append(-(-x.shape[-1] * scale // down // size))
        return original(fn, x, scale, halo, size, down)

    monkeypatch.setattr(autoencoder_gaussian_dac, "apply_in_chunks", counting)
    return chunks


@pytest.mark.parametrize("frames, batch, chunk", [(37, 2, 16), (50, 1, 5000), (8, 3, 1), (101, 1, 333)])
def test_chunked_decode_equals_the_one_pass_decode(frames, batch, chunk, monkeypatch):
    vae = perturbed_vae(3, 0)
    z = torch.randn(batch, 4, frames, generator=torch.Generator().manual_seed(frames))
    chunks = count_chunks(monkeypatch)
    plain, chunked = one_pass_and_chunked(vae, lambda: vae.decode(z).sample, chunk, chunks)
    assert len(chunks) == 4 and (max(chunks) > 1) == (chunk < 1000)  # 3 blocks and the output layers
    assert chunked.shape == plain.shape == (batch, 1, frames * vae.hop_length)
    assert relative(chunked, plain) < 1e-4


@pytest.mark.parametrize("samples, batch, chunk", [(37 * 16, 2, 16), (600, 1, 5000), (101 * 16 + 5, 1, 333)])
def test_chunked_encode_equals_the_one_pass_encode(samples, batch, chunk, monkeypatch):
    vae = perturbed_vae(4, 1)
    audio = 0.5 * torch.randn(batch, 1, samples, generator=torch.Generator().manual_seed(samples))
    chunks = count_chunks(monkeypatch)
    plain, chunked = one_pass_and_chunked(vae, lambda: vae.encode(audio).latent_dist, chunk, chunks)
    assert len(chunks) == 4 and (max(chunks) > 1) == (chunk < 1000)  # the first convolution and 3 blocks
    for a, b in ((chunked.mean, plain.mean), (chunked.std, plain.std)):
        assert a.shape == b.shape and relative(a, b) < 1e-4


def test_apply_in_chunks_is_exact_for_a_time_local_function():
    conv = torch.nn.Conv1d(3, 5, kernel_size=7, padding=9, dilation=3).double()
    x = torch.randn(2, 3, 5000, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(apply_in_chunks(conv, x, 1, 9, 1024), conv(x), rtol=0, atol=1e-12)
        with pytest.raises(AssertionError):  # too small a halo is not exact: the test can fail
            torch.testing.assert_close(apply_in_chunks(conv, x, 1, 0, 1000), conv(x), rtol=0, atol=1e-12)
        down = torch.nn.Conv1d(3, 4, kernel_size=8, stride=4, padding=2).double()
        torch.testing.assert_close(apply_in_chunks(down, x, 1, 8, 100, down=4), down(x), rtol=0, atol=1e-12)


def test_gradients_go_through_the_one_pass_path_and_bad_sizes_are_refused():
    vae = tiny_vae()
    z = torch.randn(1, 4, 12, requires_grad=True)
    audio = vae.decode(z).sample  # grad enabled: the plain sequential path, differentiable
    audio.square().sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    for bad in (0, -5, 1.5, True):
        with pytest.raises(ValueError, match="chunk_elements"):
            vae.enable_tiling(chunk_elements=bad)


def test_a_pipeline_sample_is_the_same_with_and_without_tiling():
    pipe = tiny_pipeline(student=True)
    pipe.set_progress_bar_config(disable=True)
    pipe.vae.enable_tiling(chunk_elements=64)
    tiled = pipe("a dog barks", num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="pt").audios
    pipe.vae.disable_tiling()
    plain = pipe("a dog barks", num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="pt").audios
    assert relative(tiled, plain) < 1e-4
