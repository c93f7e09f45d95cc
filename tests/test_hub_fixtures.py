"""Tiny stand-ins for the authors' released files, written in their exact layouts (pickles as they save them), for
the tests of `hub/`: `<variant>_ema_*.pt` (a state dict of their SA_EDM: `dit.*` + the CLAP copy under
`text_encoder.model.*`), `z_stats.pth`, audiotools' `weights.pth` (weight-normed convolutions + constructor kwargs in
the metadata) and a laion-clap training checkpoint (`{'epoch', 'state_dict': {'module.…'}, 'optimizer'}`).
"""

import copy
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_models import authors_state_dict
from tiny_models import tiny_roberta_tokenizer, tiny_transformer, tiny_vae
from transformers import RobertaConfig, RobertaModel

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `hub` is a folder run from the repository root, not an installed package
    sys.path.insert(0, str(ROOT))

VARIANT_FILES = {"ac_v1_iclr": "ac_v1_iclr_ema_0999_010446.pt", "ac_v2": "ac_v2_ema_0999_030000.pt"}
TEXT_CONFIG = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=37,
    max_position_embeddings=128,
    type_vocab_size=1,
    layer_norm_eps=1e-5,
    pad_token_id=1,
    bos_token_id=0,
    eos_token_id=2,
    projection_dim=16,
    projection_hidden_act="relu",
)
VAE_KWARGS = dict(encoder_dim=4, encoder_rates=[2, 4], latent_dim=4, decoder_dim=16, decoder_rates=[4, 2], sample_rate=44100, double_z=True)
SAMPLE_SIZE = 16


def dit_config(variant: str) -> dict:
    """The authors' dit config format, tiny: v1 attends to the projected (16-d), v2 to the pooled (32-d) CLAP token."""
    cond = TEXT_CONFIG["projection_dim"] if variant == "ac_v1_iclr" else TEXT_CONFIG["hidden_size"]
    return {"io_channels": 4, "embed_dim": 32, "depth": 2, "num_heads": 4, "cond_token_dim": cond, "global_cond_dim": 32,
            "project_cond_tokens": False, "transformer_type": "continuous_transformer"}


def laion_clap_state_dict(vocab_size: int, seed: int = 0) -> dict:
    """Keys and shapes of laion-clap's CLAP (RoBERTa text branch): the text branch is a transformers RobertaModel as
    in their code, the projections `Linear-ReLU-Linear`, plus the audio side that conversion drops."""
    torch.manual_seed(seed)
    roberta = RobertaModel(RobertaConfig(vocab_size=vocab_size, type_vocab_size=1, **{
        k: TEXT_CONFIG[k] for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                                    "max_position_embeddings", "layer_norm_eps", "pad_token_id")}))
    hidden, joint = TEXT_CONFIG["hidden_size"], TEXT_CONFIG["projection_dim"]
    sd = {f"text_branch.{k}": v for k, v in roberta.state_dict().items()}
    # transformers < 4.31 saved the position ids buffer (laion-clap deletes it on load)
    sd["text_branch.embeddings.position_ids"] = torch.arange(TEXT_CONFIG["max_position_embeddings"])[None]
    for side, width in (("text", hidden), ("audio", 24)):
        sd[f"{side}_projection.0.weight"] = torch.randn(joint, width)
        sd[f"{side}_projection.0.bias"] = torch.randn(joint)
        sd[f"{side}_projection.2.weight"] = torch.randn(joint, joint)
        sd[f"{side}_projection.2.bias"] = torch.randn(joint)
        sd[f"{side}_transform.sequential.0.weight"] = torch.randn(joint, joint)
    sd["audio_branch.patch_embed.proj.weight"] = torch.randn(24, 1, 4, 4)
    sd["audio_branch.bn0.num_batches_tracked"] = torch.tensor(7)
    sd["logit_scale_a"] = torch.tensor(2.65)
    sd["logit_scale_t"] = torch.tensor(2.65)
    return sd


def weight_normed_vae(seed: int = 0):
    """The authors' GaussianDAC layout: our VAE's module tree (named as theirs) with `weight_norm` on every
    convolution, as their WNConv1d / WNConvTranspose1d, and g, v perturbed so that folding is not the identity."""
    torch.manual_seed(seed)
    config = {k: v for k, v in VAE_KWARGS.items() if k not in ("sample_rate", "double_z")}
    model = copy.deepcopy(tiny_vae(seed, **config))
    for module in model.modules():
        if isinstance(module, (torch.nn.Conv1d, torch.nn.ConvTranspose1d)):
            torch.nn.utils.weight_norm(module)
            with torch.no_grad():
                module.weight_g.mul_(torch.rand_like(module.weight_g) + 0.5)
                module.weight_v.add_(torch.randn_like(module.weight_v) * 0.1)
    return model


def write_authors_files(root: Path, variant: str = "ac_v2", seed: int = 0) -> dict:
    """Writes the four files of `variant` under `root` in the Hub repo's layout; returns what was written (state
    dicts and the tokenizer folder) for comparisons."""
    tokenizer = tiny_roberta_tokenizer()
    tok_dir = root / "roberta-tokenizer"
    tokenizer.save_pretrained(tok_dir)
    vocab = len(tokenizer)
    ckpt_dir = root / "model_checkpoints" / "soundctm"
    ckpt_dir.mkdir(parents=True, exist_ok=True)

    clap = laion_clap_state_dict(vocab, seed)
    cfg = dit_config(variant)
    model = tiny_transformer(cfg["cond_token_dim"], seed=seed)
    # unit-variance random weights overflow half precision after a few layers: scale them to trained-network sizes
    dit = {k: v if "inv_freq" in k else 0.2 * v for k, v in authors_state_dict(model, teacher=False, seed=seed).items()}
    sa_edm = {f"dit.{k}": v for k, v in dit.items()}
    sa_edm.update({f"text_encoder.model.{k}": v.clone() for k, v in clap.items()})
    torch.save(sa_edm, ckpt_dir / VARIANT_FILES[variant])

    z_stats = {"z_mean": torch.tensor([0.1, -0.2, 0.05, 0.3]), "z_std": torch.tensor([0.9, 1.1, 1.0, 0.8])}
    torch.save(z_stats, ckpt_dir / "z_stats.pth")

    vae = weight_normed_vae(seed)
    vae_dir = root / "utils_checkpoints" / "vae" / "gaussiandac"
    vae_dir.mkdir(parents=True)
    torch.save({"state_dict": vae.state_dict(), "metadata": {"kwargs": dict(VAE_KWARGS)}}, vae_dir / "weights.pth")

    clap_dir = root / "utils_checkpoints" / "clap"
    clap_dir.mkdir(parents=True)
    torch.save(
        {"epoch": 45, "name": "630k-audioset", "best_metric": np.float64(0.41),
         "state_dict": {f"module.{k}": v for k, v in clap.items()}, "optimizer": {"state": {}, "param_groups": []}},
        clap_dir / "630k-audioset-best.pt",
    )
    (root / "text_config.json").write_text(json.dumps({**TEXT_CONFIG, "vocab_size": vocab}))
    (root / "dit_config.json").write_text(json.dumps(cfg))
    return dict(dit=dit, clap=clap, z_stats=z_stats, vae=vae, tokenizer_dir=tok_dir, root=root)


def convert_args(written: dict, variant: str, output: Path) -> list[str]:
    root = written["root"]
    return ["--variant", variant, "--source", str(root), "--output", str(output), "--tokenizer", str(written["tokenizer_dir"]),
            "--dit-config", str(root / "dit_config.json"), "--text-config", str(root / "text_config.json"),
            "--sample-size", str(SAMPLE_SIZE)]


@pytest.fixture(scope="session")
def authors_files(tmp_path_factory):
    """variant -> the written stand-in files (ac_v1_iclr and ac_v2)."""
    return {v: write_authors_files(tmp_path_factory.mktemp(f"authors-{v}"), v) for v in VARIANT_FILES}


@pytest.fixture(scope="session")
def converted(authors_files, tmp_path_factory):
    """variant -> a folder converted by `python -m hub.convert` (in-process main) with --fp16."""
    from hub.convert import main

    out = {}
    for variant, written in authors_files.items():
        folder = tmp_path_factory.mktemp(f"converted-{variant}") / "pipe"
        assert main(convert_args(written, variant, folder) + ["--fp16", "--repo-id", f"someone/soundctm-{variant}"]) == 0
        out[variant] = folder
    return out


def subprocess_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    env.update({"HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", **extra})
    return env
