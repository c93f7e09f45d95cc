"""distill/latent_cache.py: a clip is encoded once, in memory and across runs on disk, and the cached posterior is
the VAE's own; posteriors of one VAE are never served for another."""

import os
import sys

import torch
from tiny_models import tiny_vae

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from distill.latent_cache import PosteriorCache, module_fingerprint  # noqa: E402


def clips(n, seed=0):
    return torch.randn(n, 64, generator=torch.Generator().manual_seed(seed)) * 0.1


def test_cached_posteriors_are_the_vaes_and_each_clip_is_encoded_once():
    vae = tiny_vae().eval()
    audio = clips(5)
    cache = PosteriorCache(vae, batch_size=2)
    mean, std = cache.encode(audio)
    with torch.no_grad():
        posterior = vae.encode(audio[:, None]).latent_dist
    torch.testing.assert_close(mean, posterior.mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(std, posterior.std, rtol=1e-5, atol=1e-6)
    assert (cache.hits, cache.misses) == (0, 5)
    # a batch of seen and unseen clips (and a (B, 1, samples) layout): only the unseen one is encoded, order kept
    batch = torch.cat([audio[[3, 0]], clips(1, seed=1)])[:, None]
    mean2, _ = cache.encode(batch)
    assert (cache.hits, cache.misses) == (2, 6)
    torch.testing.assert_close(mean2[:2], mean[[3, 0]])
    with torch.no_grad():
        torch.testing.assert_close(mean2[2:], vae.encode(batch[2:]).latent_dist.mean, rtol=1e-5, atol=1e-6)
    # a clip that differs in one sample is another clip
    changed = audio[:1].clone()
    changed[0, 10] += 1e-3
    cache.encode(changed)
    assert cache.misses == 7


def test_a_disk_cache_is_read_by_the_next_run_and_kept_apart_per_vae(tmp_path):
    vae = tiny_vae().eval()
    audio = clips(3)
    first = PosteriorCache(vae, str(tmp_path))
    mean, std = first.encode(audio)
    assert len(os.listdir(tmp_path / module_fingerprint(vae))) == 3

    second = PosteriorCache(vae, str(tmp_path))
    mean2, std2 = second.encode(audio)
    assert (second.hits, second.misses) == (3, 0)
    assert torch.equal(mean, mean2) and torch.equal(std, std2)

    # the same weights saved and loaded from another folder (another `_name_or_path`) share the entries
    vae.save_pretrained(str(tmp_path / "saved_vae"))
    reloaded = type(vae).from_pretrained(str(tmp_path / "saved_vae"))
    assert module_fingerprint(reloaded) == module_fingerprint(vae)

    other = tiny_vae(seed=1).eval()
    assert module_fingerprint(other) != module_fingerprint(vae)
    third = PosteriorCache(other, str(tmp_path))
    mean3, _ = third.encode(audio)
    assert third.misses == 3 and not torch.allclose(mean3, mean)
