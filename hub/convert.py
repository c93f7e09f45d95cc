"""Convert the authors' released SoundCTM-DiT checkpoints (koichisaito/soundctm_dit) into a diffusers
`SoundCTMPipeline` folder: safetensors weights, configs, the pipeline code and a model card.

    # with a network: downloads the variant's files and roberta-base's tokenizer
    python -m hub.convert --variant ac_v2 --output soundctm-dit-ac-v2
    # offline: the repo's files in a local folder, and a folder with roberta-base's vocab.json + merges.txt
    python -m hub.convert --variant ac_v2 --source ./soundctm_dit --tokenizer ./roberta-base --output soundctm-dit-ac-v2

The folder loads with `SoundCTMPipeline.from_pretrained(folder)`, with
`DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)` (nothing installed but diffusers and
transformers), and with `custom_pipeline="pipelines/soundctm"`.

`--variant unet16k` converts the 16 kHz SoundCTM-UNet release (Sony/soundctm) into two folders, OUTPUT/student and
OUTPUT/teacher: see `python -m hub.convert --variant unet16k --help` (hub/convert_unet16k.py).

The input pickles are read with torch.load(weights_only=True); a file that needs more is refused unless you pass
--trust-pickles (see hub/authors_checkpoints.py).
"""

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from transformers import ClapTextConfig

from soundctm import CTMScheduler, SoundCTMPipeline

from .authors_checkpoints import (
    AUTHORS_REPO,
    ROBERTA_BASE_TEXT_CONFIG,
    VARIANTS,
    convert_clap_text,
    convert_dit,
    convert_vae,
    embedded_clap_matches,
    get_variant,
    load_clap_tokenizer,
    resolve_source_files,
)
from .folders import atomic_output_dir, human_size, list_files
from .model_card import CardFacts, write_model_card


def _read_json_file(path: str | None, what: str) -> dict | None:
    if path is None:
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{what} {path}: {err}") from None


def build_pipeline(
    variant: str,
    source: str = AUTHORS_REPO,
    tokenizer: str | None = None,
    checkpoint: str | None = None,
    vae_weights: str | None = None,
    z_stats: str | None = None,
    clap_checkpoint: str | None = None,
    dit_config: dict | None = None,
    text_config: dict | None = None,
    sample_size: int = 432,
    trust_pickles: bool = False,
    revision: str | None = None,
    log=print,
) -> SoundCTMPipeline:
    """The variant's `SoundCTMPipeline`, converted from the authors' files (see `python -m hub.convert --help`)."""
    spec = get_variant(variant)
    files = resolve_source_files(
        source, spec, revision, checkpoint=checkpoint, z_stats=z_stats, vae_weights=vae_weights, clap=clap_checkpoint
    )
    # the tokenizer first: a missing one fails before gigabytes of checkpoints are read
    clap_tokenizer = load_clap_tokenizer(tokenizer, ClapTextConfig(**(text_config or ROBERTA_BASE_TEXT_CONFIG)))
    log(f"reading {files.checkpoint}")
    dit = convert_dit(files.checkpoint, dit_config or spec.dit_config, sample_size, trust_pickles)
    log(f"  DiT: {dit.converted_keys} tensors converted, {len(dit.dropped_keys)} dropped (CLAP copy and constants)")
    log(f"reading {files.clap}")
    text_encoder, clap_dropped = convert_clap_text(files.clap, text_config, trust_pickles)
    log(f"  CLAP text branch: {len(text_encoder.state_dict())} tensors, {len(clap_dropped)} dropped (audio branch)")
    try:
        same, diff = embedded_clap_matches(dit.embedded_clap, text_encoder)
    except ValueError as err:
        raise ValueError(f"{files.checkpoint}: {err}") from None
    if dit.embedded_clap and not same:
        log(f"  warning: the CLAP copy inside {files.checkpoint.name} differs from {files.clap.name} (max |diff| {diff:g})")
    log(f"reading {files.vae_weights} and {files.z_stats}")
    vae = convert_vae(files.vae_weights, files.z_stats, trust_pickles)

    width = text_encoder.config.projection_dim if spec.text_embedding == "projected" else text_encoder.config.hidden_size
    if width != dit.model.config.cross_attention_dim:
        raise ValueError(
            f"{files.checkpoint}: the DiT attends to {dit.model.config.cross_attention_dim}-d text tokens, but the "
            f"{spec.text_embedding!r} CLAP embedding of variant {variant} is {width}-d: wrong --variant for this checkpoint?"
        )
    if vae.config.latent_dim != dit.model.config.in_channels:
        raise ValueError(
            f"{files.vae_weights}: latent_dim {vae.config.latent_dim} != the DiT's {dit.model.config.in_channels} channels"
        )
    return SoundCTMPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=clap_tokenizer,
        transformer=dit.model,
        scheduler=CTMScheduler(),  # the authors' sampler: σ 0.002..80, σ_d 0.5, ρ 7, γ 0
        text_embedding=spec.text_embedding,
    )


def variant_card_facts(variant: str) -> CardFacts:
    spec = get_variant(variant)
    return CardFacts(
        title=f"SoundCTM-DiT-1B ({variant}), diffusers format",
        license="cc-by-4.0",
        base_model=AUTHORS_REPO,
        datasets=list(spec.datasets),
        training_data=spec.training_data,
        text_encoder="laion-clap 630k-audioset-best text branch (RoBERTa) as ClapTextModelWithProjection",
        origin=(
            f"The authors' released `{spec.name}` weights (the EMA network, μ = 0.999) from "
            f"[{AUTHORS_REPO}](https://huggingface.co/{AUTHORS_REPO}), converted to safetensors and diffusers "
            f"components by `python -m hub.convert --variant {spec.name}`. {spec.notes}"
        ),
        tags=[f"soundctm-{spec.name}"],
    )


def write_fp16_weights(pipe: SoundCTMPipeline, folder: Path) -> None:
    """Adds the diffusers `variant="fp16"` weight files. Only the weights: a second save would also rewrite the configs
    (transformers records `dtype: float16` in config.json, which would make the default load half precision).
    Leaves `pipe` in half precision."""
    with tempfile.TemporaryDirectory(dir=folder.parent) as half:
        pipe.to(torch.float16).save_pretrained(half, variant="fp16")
        for path in Path(half).glob("*/*.fp16.safetensors"):
            shutil.move(path, folder / path.relative_to(half))


def convert(output: str | Path, variant: str, fp16: bool = False, overwrite: bool = False, repo_id: str | None = None, **kwargs) -> Path:
    """Converts and writes the pipeline folder `output` all at once (nothing is left behind on failure)."""
    log = kwargs.get("log", print)
    pipe = build_pipeline(variant, **kwargs)
    with atomic_output_dir(output, overwrite) as tmp:
        log(f"writing {output}")
        pipe.save_pretrained(tmp)
        if fp16:
            write_fp16_weights(pipe, tmp)
        facts = variant_card_facts(variant).updated(repo_id=repo_id or str(output))
        write_model_card(tmp, facts)
    for path, size in list_files(output):
        log(f"  {path}  {human_size(size)}")
    return Path(output)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m hub.convert", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--variant",
        required=True,
        choices=sorted(VARIANTS) + ["unet16k"],
        help="which released model (unet16k: the 16 kHz SoundCTM-UNet, its own options: --variant unet16k --help)",
    )
    parser.add_argument("--output", required=True, help="the pipeline folder to write")
    parser.add_argument(
        "--source",
        default=AUTHORS_REPO,
        help=f"a local folder with the authors' files (their Hub layout, or their demo's ckpt/ layout), or a Hub repo "
        f"id to download them from (default {AUTHORS_REPO})",
    )
    parser.add_argument(
        "--tokenizer", default=None, help="a folder with roberta-base's tokenizer files (default: download FacebookAI/roberta-base)"
    )
    parser.add_argument("--fp16", action="store_true", help="also write fp16 weights (diffusers variant 'fp16')")
    parser.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    parser.add_argument("--repo-id", default=None, help="Hub id to show in the model card's usage snippet")
    parser.add_argument("--revision", default=None, help="revision of the --source Hub repo")
    files = parser.add_argument_group("individual files (default: found under --source)")
    files.add_argument("--checkpoint", default=None, help="the variant's <variant>_ema_*.pt")
    files.add_argument("--vae-weights", default=None, help="gaussiandac/weights.pth")
    files.add_argument("--z-stats", default=None, help="z_stats.pth")
    files.add_argument("--clap-checkpoint", default=None, help="630k-audioset-best.pt")
    sizes = parser.add_argument_group("architecture (default: the released models')")
    sizes.add_argument("--dit-config", default=None, help="a DiT config JSON in the authors' format (configs/dit_config/*.json)")
    sizes.add_argument(
        "--text-config", default=None, help=f"a transformers ClapTextConfig JSON (default roberta-base sized: {ROBERTA_BASE_TEXT_CONFIG['hidden_size']}-d, 12 layers)"
    )
    sizes.add_argument("--sample-size", type=int, default=432, help="latent frames generated (default 432 = 10.03 s)")
    parser.add_argument(
        "--trust-pickles",
        action="store_true",
        help="read input pickles with full unpickling when torch.load(weights_only=True) refuses them (runs code from "
        "the files: only for files from a source you trust)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    variant = argparse.ArgumentParser(add_help=False)
    variant.add_argument("--variant")
    if variant.parse_known_args(argv)[0].variant == "unet16k":
        from . import convert_unet16k

        return convert_unet16k.main(argv)
    args = build_parser().parse_args(argv)
    try:
        convert(
            args.output,
            args.variant,
            fp16=args.fp16,
            overwrite=args.overwrite,
            repo_id=args.repo_id,
            source=args.source,
            tokenizer=args.tokenizer,
            checkpoint=args.checkpoint,
            vae_weights=args.vae_weights,
            z_stats=args.z_stats,
            clap_checkpoint=args.clap_checkpoint,
            dit_config=_read_json_file(args.dit_config, "--dit-config"),
            text_config=_read_json_file(args.text_config, "--text-config"),
            sample_size=args.sample_size,
            trust_pickles=args.trust_pickles,
            revision=args.revision,
        )
    except (ValueError, OSError) as err:
        print(f"hub.convert: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
