"""Model cards for SoundCTM pipeline folders, from `templates/model_card.md` with `huggingface_hub.ModelCard`: the DiT
and UNet families of `SoundCTMPipeline`, and the Stable Audio Open students and teachers of
`SoundCTMStableAudioPipeline`.

What a card states comes from two places:
- the folder itself (configs and safetensors headers, nothing is loaded): student or teacher, text embedding,
  sampling rate, channels, length, layer counts, parameter counts, weight variants;
- `CardFacts`, what the folder cannot know: title, license of the weights, base model, datasets, a description of
  the training data, the text encoder's origin and where the weights came from. Facts are arguments, or read back
  from the `soundctm` entry of an existing card's metadata, so that the converted authors' models and students
  from `distill/` get cards from the same template.

    python -m hub.model_card FOLDER --title "My SoundCTM student" --base-model me/teacher --dataset me/sounds \\
        --license cc-by-4.0 --training-data "my sound library" --repo-id me/soundctm-student
"""

import argparse
import json
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData

TEMPLATE = Path(__file__).parent / "templates" / "model_card.md"
PAPER_AUTHORS = "Koichi Saito, Dongjun Kim, Takashi Shibuya, Chieh-Hsin Lai, Zhi Zhong, Yuhta Takida, Yuki Mitsufuji"
PAPER_ARXIV = "2405.18503"
DEFAULT_PROMPT = "a dog barks in the distance while rain falls on a roof"
BUILTIN_TAGS = ("soundctm", "text-to-audio", "consistency-trajectory-model", "audio")
STANDARD_FIELDS = ("license", "base_model", "datasets", "tags", "example_prompts")
# The pipeline classes whose folders get cards (model_index.json's `_class_name`), and the teachers' transformer classes
# (diffusers' own, whose configs have no `is_student`).
PIPELINE_CLASSES = ("SoundCTMPipeline", "SoundCTMStableAudioPipeline")
TEACHER_CLASSES = ("UNet2DConditionModel", "StableAudioDiTModel")
STABLE_AUDIO_GUIDANCE_SCALE = 7.0  # SoundCTMStableAudioPipeline's default ω (StableAudioPipeline's CFG scale)
STABLE_AUDIO_CONDITIONING = "T5 token states through Stable Audio's projection model, plus seconds-start/seconds-end conditioning"
TEXT_EMBEDDING_WORDS = {
    "projected": "one L2-normalised token: the projected text embedding",
    "pooled": "one L2-normalised token: the pooled text output (before the projection)",
    "mean": "one L2-normalised token: the attention-masked mean of the last hidden states",
}


@dataclass
class CardFacts:
    """What a model card says that the pipeline folder cannot tell."""

    title: str = "SoundCTM text-to-sound model"
    license: str = "cc-by-4.0"
    base_model: str | None = None
    datasets: list[str] = field(default_factory=list)
    training_data: str | None = None
    text_encoder: str | None = None
    origin: str | None = None
    repo_id: str | None = None
    prompt_language: str | None = "English"
    tags: list[str] = field(default_factory=list)
    # Prompts the model knows, shown as the Hub widget's examples and as the app's examples.
    example_prompts: list[str] = field(default_factory=list)
    # Markdown shown under "Reported results" (e.g. the paper's table for this model), verbatim.
    results: str | None = None
    # ν of the recommended 16-step refinement: the paper's 5 unless the model was measured to prefer another.
    refine_nu: float = 5.0

    @classmethod
    def from_card(cls, path: str | Path) -> "CardFacts":
        """The facts stored in the metadata of a card written by `write_model_card` (defaults for a card without)."""
        data = ModelCard.load(path).data.to_dict()
        stored = data.get("soundctm") or {}
        known = {f.name for f in fields(cls)}
        facts = cls(**{k: v for k, v in stored.items() if k in known})
        facts.license = data.get("license", facts.license)
        facts.base_model = data.get("base_model", facts.base_model)
        facts.datasets = list(data.get("datasets") or facts.datasets)
        facts.tags = [t for t in data.get("tags") or [] if t not in BUILTIN_TAGS]
        facts.example_prompts = example_prompts(data)
        return facts

    def updated(self, **changes) -> "CardFacts":
        """A copy with every change that is not None."""
        return CardFacts(**{**asdict(self), **{k: v for k, v in changes.items() if v is not None}})


def example_prompts(card_data: dict) -> list[str]:
    """The prompts of a card's `widget` metadata (the Hub's example inputs), in order."""
    return [entry["text"] for entry in card_data.get("widget") or [] if isinstance(entry, dict) and isinstance(entry.get("text"), str)]


def _read_json(path: Path) -> dict:
    with open(path) as f:
        return json.load(f)


def _parameter_count(folder: Path) -> int | None:
    from safetensors import safe_open

    files = [p for p in folder.glob("*.safetensors") if p.name.count(".") == 1]  # not the fp16/... variants
    if not files:
        return None
    total = 0
    for path in files:
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                shape = f.get_slice(key).get_shape()
                count = 1
                for n in shape:
                    count *= n
                total += count
    return total


def _count_words(count: int | None) -> str | None:
    if count is None:
        return None
    for scale, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if count >= scale:
            return f"{count / scale:.3g} {unit}"
    return str(count)


def describe_pipeline(folder: str | Path) -> dict:
    """What a SoundCTM pipeline folder (of `SoundCTMPipeline` or `SoundCTMStableAudioPipeline`) says about itself, read
    from its configs and safetensors headers."""
    folder = Path(folder)
    index_path = folder / "model_index.json"
    if not index_path.is_file():
        raise FileNotFoundError(f"{folder} is not a pipeline folder: no model_index.json")
    index = _read_json(index_path)
    class_name = index.get("_class_name")
    class_name = class_name[-1] if isinstance(class_name, list) else class_name
    if class_name not in PIPELINE_CLASSES:
        raise ValueError(
            f"{index_path}: '_class_name' is {class_name!r}, not a SoundCTM pipeline folder ({' or '.join(PIPELINE_CLASSES)})"
        )
    stable_audio = class_name == "SoundCTMStableAudioPipeline"  # Stable Audio Open's student or teacher
    package = index.get("text_encoder_package")  # a folder may leave the text encoder to a pip package
    needed = ("transformer", "vae") + (() if package else ("text_encoder",)) + (("projection_model",) if stable_audio else ())
    for component in needed:
        if not (folder / component / "config.json").is_file():
            raise FileNotFoundError(f"{folder}: missing {component}/config.json")
    dit = _read_json(folder / "transformer" / "config.json")
    vae = _read_json(folder / "vae" / "config.json")
    text = _read_json(folder / "text_encoder" / "config.json") if (folder / "text_encoder" / "config.json").is_file() else {}
    if vae.get("_class_name") == "AutoencoderMelVocoder":  # AudioLDM's mel VAE (4x down) + HiFi-GAN: the 16 kHz family
        hop = int(vae.get("stft_hop_length", 160)) * 2 ** (len((vae.get("vae_config") or {}).get("block_out_channels", [0, 0, 0])) - 1)
        vae_kind = f"mel VAE ({vae.get('n_mels', 64)} mel bands) with a HiFi-GAN vocoder"
    elif vae.get("_class_name") in ("AutoencoderOobleckSoundCTM", "AutoencoderOobleck"):  # Stable Audio Open's VAE
        hop = 1
        for ratio in vae.get("downsampling_ratios", [2, 4, 4, 8, 8]):
            hop *= int(ratio)
        vae_kind = "Oobleck VAE (Stable Audio Open's)"
    elif vae.get("_class_name") == "AutoencoderLogMel":
        hop = int(vae.get("stft_hop_length", 1024)) * int(vae.get("frames_per_latent", 2))
        vae_kind = f"log-mel spectral codec ({vae.get('n_mels', 128)} mel bands, Griffin-Lim decoder)"
    else:
        hop = 1
        for rate in vae.get("encoder_rates", [4, 4, 8, 8]):
            hop *= int(rate)
        vae_kind = "Gaussian DAC"
    rate = int(vae.get("sampling_rate", 44100))
    channels = int(vae.get("audio_channels", 1))
    variants = sorted({p.name.split(".")[-2] for p in folder.glob("*/*.safetensors") if p.name.count(".") == 2})
    tokenizer_config = folder / "tokenizer" / "tokenizer_config.json"
    max_tokens = _read_json(tokenizer_config).get("model_max_length") if tokenizer_config.is_file() else None
    unet = dit.get("_class_name") in ("UNet2DConditionModel", "SoundCTMUNet2DConditionModel")
    frames = dit.get("sample_size", 432)
    frames = frames[0] if isinstance(frames, list) else frames  # a UNet's (frames, mel bins / 4)
    width = (dit.get("num_attention_heads") or 0) * (dit.get("attention_head_dim") or 0)
    if unet:  # TANGO's UNet (16 kHz family): no `num_layers`, a teacher is diffusers' own class
        levels = dit.get("block_out_channels") or []
        architecture = f"UNet with {len(levels)} levels of {'/'.join(map(str, levels))} channels"
    else:
        architecture = f"{'Stable Audio ' if stable_audio else ''}DiT with {dit.get('num_layers')} layers, width {width}"
    text_embedding = None if stable_audio else index.get("text_embedding", "projected")
    if stable_audio:
        conditioning = STABLE_AUDIO_CONDITIONING
    else:
        conditioning = TEXT_EMBEDDING_WORDS.get(text_embedding, text_embedding)
    return dict(
        pipeline_class=class_name,
        is_student=bool(dit.get("is_student", dit.get("_class_name") not in TEACHER_CLASSES)),
        architecture=architecture,
        text_embedding=text_embedding,
        conditioning=conditioning,
        text_encoder_class=(text.get("architectures") or [text.get("model_type", "?")])[0] if text else f"from the `{package}` package",
        vae_kind=vae_kind,
        dit_layers=dit.get("num_layers"),
        dit_width=width if not unet else None,
        # the width of a conditioning token (what `prompt_embeds` has): a Stable Audio DiT projects its input first
        cross_attention_dim=dit.get("cross_attention_input_dim" if stable_audio else "cross_attention_dim"),
        dit_params=_parameter_count(folder / "transformer"),
        vae_params=_parameter_count(folder / "vae"),
        latent_channels=vae.get("latent_dim") or vae.get("decoder_input_channels"),
        hop_length=hop,
        sampling_rate=rate,
        audio_channels=channels,
        length_s=int(frames) * hop / rate,
        max_tokens=max_tokens if isinstance(max_tokens, int) and max_tokens < 10**6 else None,
        variants=variants,
        guidance_scale=float(index.get("guidance_scale", STABLE_AUDIO_GUIDANCE_SCALE if stable_audio else 5.0)),
        teacher_steps=int(index.get("num_inference_steps") or 40),  # a teacher's default Heun steps
        text_encoder_package=package,
    )


def make_model_card(folder: str | Path, facts: CardFacts) -> ModelCard:
    """The model card of a SoundCTM pipeline folder (a student or a teacher), from the template."""
    info = describe_pipeline(folder)
    kind = "CTM student" if info["is_student"] else "EDM teacher"
    text_encoder = facts.text_encoder or info["text_encoder_class"]
    text_encoder = f"{text_encoder}; {info['conditioning']} ({info['cross_attention_dim']}-d)"
    stable_audio = info["pipeline_class"] == "SoundCTMStableAudioPipeline"
    summary = (
        f"A SoundCTM {kind}{' of Stable Audio Open' if stable_audio and info['is_student'] else ''} for text-to-sound "
        "generation (Saito et al., ICLR 2025): "
        + (
            "1-step drafts, and the same sound refined by N deterministic steps (γ = 0), from one network."
            if info["is_student"]
            else f"{'Stable Audio Open, ' if stable_audio else ''}the latent-diffusion teacher that SoundCTM students "
            "are distilled from, sampled with EDM Heun."
        )
    )
    card_data = ModelCardData(
        license=facts.license,
        library_name="diffusers",
        pipeline_tag="text-to-audio",
        base_model=facts.base_model,
        datasets=list(facts.datasets) or None,
        tags=[*BUILTIN_TAGS, *(t for t in facts.tags if t not in BUILTIN_TAGS)],
        widget=[{"text": prompt} for prompt in facts.example_prompts] or None,
        # the facts that have no standard metadata field, so that `CardFacts.from_card` can read them back
        soundctm={k: v for k, v in asdict(facts).items() if k not in STANDARD_FIELDS and v not in (None, [], "")},
    )
    return ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE),
        title=facts.title,
        summary=summary,
        origin=facts.origin,
        kind_long=kind,
        is_student=info["is_student"],
        architecture=info["architecture"],
        results=facts.results,
        dit_layers=info["dit_layers"],
        dit_width=info["dit_width"],
        dit_params=_count_words(info["dit_params"]),
        vae_params=_count_words(info["vae_params"]),
        latent_channels=info["latent_channels"],
        hop_length=info["hop_length"],
        vae_kind=info["vae_kind"],
        text_encoder=text_encoder,
        channels_word="Mono" if info["audio_channels"] == 1 else f"{info['audio_channels']}-channel",
        sampling_rate_khz=f"{info['sampling_rate'] / 1000:g}",
        length_s=f"{info['length_s']:.3g}",
        training_data=facts.training_data or "not stated",
        variants=", ".join(["fp32"] + info["variants"]) if info["variants"] else None,
        model_path=facts.repo_id or "path/to/this/folder",
        pipeline_class=info["pipeline_class"],
        length_note=(
            "`audio_length_in_s` also sets the seconds conditioning, and crops; it does not extend"
            if stable_audio
            else "`audio_length_in_s` crops, it does not extend"
        ),
        prompt=(facts.example_prompts or [DEFAULT_PROMPT])[0],
        guidance_scale=f"{info['guidance_scale']:.1f}",
        teacher_steps=info["teacher_steps"],
        teacher_evaluations=2 * info["teacher_steps"] - 1,
        refine_nu=f"{float(facts.refine_nu):.1f}",
        text_encoder_package=info["text_encoder_package"],
        text_encoder_package_pip=(info["text_encoder_package"] or "").replace("_", "-"),
        max_tokens=info["max_tokens"] or "the tokenizer's maximum",
        prompt_language=facts.prompt_language,
        paper_authors=PAPER_AUTHORS,
    )


def write_model_card(folder: str | Path, facts: CardFacts, path: str | Path | None = None) -> Path:
    """Writes the card as `folder/README.md` (or `path`)."""
    path = Path(path) if path is not None else Path(folder) / "README.md"
    make_model_card(folder, facts).save(path)
    return path


def add_card_arguments(parser: argparse.ArgumentParser, repo_id: bool = True) -> None:
    group = parser.add_argument_group("model card facts (default: the folder's existing card, if any)")
    group.add_argument("--title", default=None, help="card title")
    group.add_argument("--license", default=None, help="license of the weights (default cc-by-4.0)")
    group.add_argument("--base-model", default=None, help="Hub id of the model this one comes from (teacher, original)")
    group.add_argument("--dataset", dest="datasets", action="append", default=None, help="dataset name or Hub id (repeatable)")
    group.add_argument("--training-data", default=None, help="what the model was trained/distilled on, in words")
    group.add_argument("--text-encoder", default=None, help="the text encoder, in words (default: its class name)")
    group.add_argument("--origin", default=None, help="a sentence on where the weights come from")
    group.add_argument("--example-prompt", dest="example_prompts", action="append", default=None,
                       help="a prompt the model knows, for the Hub widget and the app's examples (repeatable)")
    group.add_argument("--refine-nu", type=float, default=None, help="ν of the recommended 16-step refinement (default 5)")
    if repo_id:
        group.add_argument("--repo-id", default=None, help="Hub id used in the card's usage snippet")


def facts_from_args(folder: str | Path, args: argparse.Namespace) -> CardFacts:
    """The folder's stored facts (from its README.md, if it has one), updated with the command-line arguments."""
    readme = Path(folder) / "README.md"
    facts = CardFacts.from_card(readme) if readme.is_file() else CardFacts()
    return facts.updated(
        title=args.title,
        license=args.license,
        base_model=args.base_model,
        datasets=args.datasets,
        training_data=args.training_data,
        text_encoder=args.text_encoder,
        origin=args.origin,
        example_prompts=args.example_prompts,
        refine_nu=args.refine_nu,
        repo_id=getattr(args, "repo_id", None),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hub.model_card", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("folder", help="a SoundCTM pipeline folder")
    parser.add_argument("-o", "--output", default=None, help="where to write the card (default FOLDER/README.md)")
    add_card_arguments(parser)
    args = parser.parse_args(argv)
    try:
        path = write_model_card(args.folder, facts_from_args(args.folder, args), args.output)
    except (ValueError, OSError) as err:
        print(f"hub.model_card: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
