"""A cache of the VAE's posteriors (mean, std) per distinct waveform, so that a small dataset read for many epochs is
encoded once.

A clip's key is a hash of its samples (after decoding, resampling and cropping), so a cache never returns the latent
of other audio: a clip cropped at another offset is another key. Entries live in memory and, with a `cache_dir`, in
one safetensors file per clip under `cache_dir/<VAE fingerprint>/`, so that another run (or another stage of a
recipe) with the same VAE weights reads them instead of encoding; a VAE with other weights gets another subfolder.
"""

import hashlib
import os

import numpy as np
import torch
from safetensors.torch import load_file, save_file


def module_fingerprint(module) -> str:
    """A short hash of a model's config and weights: posteriors cached for one VAE are never read for another (and
    teacher trajectories solved by one teacher never reused for another)."""
    digest = hashlib.blake2b(digest_size=8)
    # the config without diffusers' private keys: `_name_or_path` says where it was loaded from, not what it is
    digest.update(repr(sorted((k, v) for k, v in dict(module.config).items() if not k.startswith("_"))).encode())
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


def waveform_key(waveform: torch.Tensor | np.ndarray) -> str:
    array = waveform.detach().cpu().numpy() if isinstance(waveform, torch.Tensor) else np.asarray(waveform)
    return hashlib.blake2b(np.ascontiguousarray(array, dtype=np.float32).tobytes(), digest_size=16).hexdigest()


class PosteriorCache:
    """
    `encode(audio)` = the VAE posterior's (mean, std) of a batch of waveforms, each encoded at most once.

    Args:
        vae: the `AutoencoderGaussianDAC` (its weights must not change while the cache is used).
        cache_dir (`str`, *optional*): also keep entries on disk here; None = memory only.
        batch_size (`int`): clips per VAE call when several are missing.
    """

    def __init__(self, vae, cache_dir: str | None = None, batch_size: int = 8):
        self.vae, self.batch_size = vae, int(batch_size)
        self.folder = None if cache_dir is None else os.path.join(cache_dir, module_fingerprint(vae))
        if self.folder is not None:
            os.makedirs(self.folder, exist_ok=True)
        self.memory: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.hits = self.misses = 0

    def _read(self, key: str):
        if key in self.memory:
            return self.memory[key]
        if self.folder is not None:
            path = os.path.join(self.folder, f"{key}.safetensors")
            if os.path.isfile(path):
                tensors = load_file(path)
                self.memory[key] = (tensors["mean"], tensors["std"])
                return self.memory[key]
        return None

    def _write(self, key: str, mean: torch.Tensor, std: torch.Tensor) -> None:
        mean, std = mean.detach().to("cpu", torch.float32).contiguous(), std.detach().to("cpu", torch.float32).contiguous()
        self.memory[key] = (mean, std)
        if self.folder is not None:
            path = os.path.join(self.folder, f"{key}.safetensors")
            save_file({"mean": mean, "std": std}, path + f".{os.getpid()}.tmp")
            os.replace(path + f".{os.getpid()}.tmp", path)  # readers never see half a file

    @torch.no_grad()
    def encode(self, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`audio` (B, samples) or (B, 1, samples) → (mean, std), each (B, latent_dim, frames), on `audio`'s device."""
        waveforms = audio if audio.ndim == 2 else audio[:, 0]
        keys = [waveform_key(w) for w in waveforms]
        found = [self._read(key) for key in keys]
        missing = [i for i, entry in enumerate(found) if entry is None]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        vae = self.vae
        device = next(vae.parameters()).device
        for start in range(0, len(missing), self.batch_size):
            rows = missing[start : start + self.batch_size]
            posterior = vae.encode(waveforms[rows][:, None].to(device, vae.dtype)).latent_dist
            for j, i in enumerate(rows):
                self._write(keys[i], posterior.mean[j], posterior.std[j])
                found[i] = self.memory[keys[i]]
        mean = torch.stack([entry[0] for entry in found]).to(audio.device)
        std = torch.stack([entry[1] for entry in found]).to(audio.device)
        return mean, std
