"""Convert the authors' 16 kHz SoundCTM-UNet release (Hugging Face repo `Sony/soundctm`) into two diffusers
`SoundCTMPipeline` folders: OUTPUT/student (the CTM student, `CTMScheduler`) and OUTPUT/teacher (the EDM-retrained
TANGO teacher, diffusers' own `UNet2DConditionModel`, `EDMHeunScheduler`), each with safetensors weights, configs,
the pipeline code and a model card. Both share AudioLDM-S's mel VAE + HiFi-GAN and the FLAN-T5-large encoder.

    # with a network: downloads the three checkpoints used (several GB) and google/flan-t5-large
    python -m hub.convert --variant unet16k --output models/soundctm-unet16k
    # offline: the repo's files in a local folder (its Hub layout, or the files flat in one folder), and a
    # transformers folder with flan-t5-large's T5EncoderModel + tokenizer
    python -m hub.convert --variant unet16k --source ./soundctm --text-encoder ./flan-t5-large --output models/soundctm-unet16k

Files read (paths in the Hub repo): ckpt/teacher/pytorch_model_2_sigma_025.bin, ckpt/audioldm-s-full.ckpt and the
student: soundctm_ckpt/030000/ema_0.999_030000.pt (--student-weights ema, the default: the EMA network, μ = 0.999,
which the paper reports) or soundctm_ckpt/030000/pytorch_model.bin (--student-weights online: the non-EMA weights,
which the authors' ctm_inference.py actually samples with, since its EMA load does not take effect). Inputs are read
with torch.load(weights_only=True); --trust-pickles allows full unpickling for files from a source you trust.
"""

import argparse
import re
import sys
from pathlib import Path

from .audioldm_checkpoint import convert_audioldm_checkpoint
from .authors_checkpoints import hub_reachable
from .convert import _read_json_file, write_fp16_weights  # convert.py imports this module only inside its main()
from .folders import atomic_output_dir, human_size, list_files
from .model_card import CardFacts, write_model_card
from .unet16k_checkpoints import (
    AUTHORS_REPO_16K,
    STUDENT_EMA_FILE,
    STUDENT_FILE,
    TEACHER_FILE,
    compare_text_encoder,
    load_student,
    load_student_ema,
    load_teacher,
)

AUDIOLDM_FILE = "ckpt/audioldm-s-full.ckpt"
TEXT_ENCODER_REPO = "google/flan-t5-large"
SIGMA_DATA = 0.25  # the teacher's σ_data (ckpt/student_training_summary.jsonl)
GUIDANCE_SCALE = 3.5  # the paper's Table 2: ω 3.5 for the teacher (Heun 40) and the student at 1–4 steps
STUDENT_FILES = {"ema": STUDENT_EMA_FILE, "online": STUDENT_FILE}
VARIANT = "unet16k"

# The paper's Table 2 (AudioCaps test set, 16 kHz), as the authors report it.
_TABLE_HEAD = (
    "The authors' figures (SoundCTM paper, Table 2: AudioCaps test set, 16 kHz), not measured on this conversion:\n\n"
    "| Model | Steps | ω | ν | FAD_vgg ↓ | KL_passt ↓ | IS_passt ↑ | CLAP ↑ |\n"
    "|---|---|---|---|---|---|---|---|\n"
)
TEACHER_ROW = "| Teacher (EDM Heun) | 40 | 3.5 | – | 1.71 | 1.28 | 8.11 | 0.46 |\n"
STUDENT_ROWS = (
    "| SoundCTM | 1 | 3.5 | 1.0 | 2.08 | 1.26 | 7.13 | 0.43 |\n"
    "| SoundCTM | 2 | 3.5 | 1.0 | 1.90 | 1.24 | 7.26 | 0.45 |\n"
    "| SoundCTM | 4 | 3.5 | 1.0 | 1.72 | 1.22 | 7.37 | 0.45 |\n"
    "| SoundCTM | 8 | 3.0 | 1.5 | 1.45 | 1.20 | 7.98 | 0.46 |\n"
    "| SoundCTM | 16 | 3.0 | 2.0 | 1.38 | 1.19 | 8.24 | 0.46 |\n"
)


def _is_hub_id(source: str) -> bool:
    return bool(re.fullmatch(r"[\w.-]+/[\w.-]+", source)) and not Path(source).exists() and not source.startswith((".", "/"))


def needed_files(student_weights: str) -> dict[str, str]:
    if student_weights not in STUDENT_FILES:
        raise ValueError(f"--student-weights must be one of {sorted(STUDENT_FILES)}, not {student_weights!r}")
    return {"student": STUDENT_FILES[student_weights], "teacher": TEACHER_FILE, "audioldm": AUDIOLDM_FILE}


def find_local_files(folder: str | Path, student_weights: str) -> dict[str, Path]:
    """The input files below a local folder: at their Hub paths, or directly in the folder."""
    folder = Path(folder)
    found = {}
    for name, relpath in needed_files(student_weights).items():
        for candidate in (folder / relpath, folder / Path(relpath).name):
            if candidate.is_file():
                found[name] = candidate
                break
        else:
            raise FileNotFoundError(f"--source {folder}: no {relpath} (nor {Path(relpath).name} directly in the folder)")
    return found


def download_files(repo_id: str, student_weights: str, revision: str | None = None, log=print) -> dict[str, Path]:
    from huggingface_hub import hf_hub_download

    found = {}
    for name, relpath in needed_files(student_weights).items():
        log(f"downloading {repo_id}/{relpath}")
        found[name] = Path(hf_hub_download(repo_id=repo_id, filename=relpath, revision=revision))
    return found


def load_text_encoder(folder: str | None):
    """(T5EncoderModel, tokenizer) from a local transformers folder, or google/flan-t5-large from the Hub."""
    from transformers import AutoTokenizer, T5EncoderModel

    name = folder or TEXT_ENCODER_REPO
    if folder is not None and not Path(folder).is_dir():
        raise FileNotFoundError(f"--text-encoder {folder}: not a folder (expected a transformers folder with a T5 encoder and its tokenizer)")
    # Offline, the Hub id is only tried in the local cache (at once, instead of after huggingface_hub's retries).
    local_only = folder is not None or not hub_reachable()
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=local_only)
        text_encoder = T5EncoderModel.from_pretrained(name, local_files_only=local_only).eval()
    except OSError as err:
        hint = " (the Hub cannot be reached and it is not in the local cache: pass --text-encoder DIR)" if folder is None else ""
        raise ValueError(f"cannot load the T5 text encoder from {name}{hint}: {str(err).splitlines()[0]}") from None
    return text_encoder, tokenizer


def _check_unet(unet, path: Path, vae, text_encoder) -> None:
    if unet.config.in_channels != vae.config.latent_dim:
        raise ValueError(
            f"{path}: the UNet takes {unet.config.in_channels} latent channels, but the VAE ({AUDIOLDM_FILE}) has "
            f"latent_dim {vae.config.latent_dim}"
        )
    if unet.config.cross_attention_dim != text_encoder.config.d_model:
        raise ValueError(
            f"{path}: the UNet attends to {unet.config.cross_attention_dim}-d text tokens, but the text encoder is "
            f"{text_encoder.config.d_model}-d (d_model): not the T5 this model was trained with"
        )


def _compare_copy(conversion, path: Path, text_encoder, log) -> None:
    if not conversion.text_encoder_state_dict:
        log(f"  {path.name} holds no text-encoder copy to compare with")
        return
    same, diff = compare_text_encoder(conversion.text_encoder_state_dict, text_encoder, str(path))
    if same:
        log(f"  the FLAN-T5 copy inside {path.name} equals the text encoder used")
    else:
        log(f"  warning: the FLAN-T5 copy inside {path.name} differs from the text encoder used (max |diff| {diff:g})")


def build_pipelines(
    source: str = AUTHORS_REPO_16K,
    text_encoder: str | None = None,
    student_weights: str = "ema",
    unet_config: dict | None = None,
    audioldm_config: dict | None = None,
    trust_pickles: bool = False,
    revision: str | None = None,
    log=print,
):
    """(student pipeline, teacher pipeline, the input files used), converted from the authors' files."""
    from soundctm import CTMScheduler, EDMHeunScheduler, SoundCTMPipeline

    needed_files(student_weights)  # a bad value fails before anything is read
    local = Path(source).is_dir()
    if not local and not _is_hub_id(source):
        raise FileNotFoundError(f"--source {source!r} is neither an existing folder nor a Hub repo id (owner/name)")
    files = find_local_files(source, student_weights) if local else None  # missing local files fail first
    # the text encoder before the checkpoints: a missing one fails before gigabytes are read
    log(f"loading the text encoder from {text_encoder or TEXT_ENCODER_REPO}")
    t5, tokenizer = load_text_encoder(text_encoder)
    if files is None:
        files = download_files(source, student_weights, revision, log)

    log(f"reading {files['teacher']}")
    teacher = load_teacher(files["teacher"], unet_config, trust_pickles)
    log(f"  teacher UNet: {teacher.converted_keys} tensors, {len(teacher.dropped_keys)} dropped (the FLAN-T5 copy)")
    log(f"reading {files['student']}")
    loader = load_student_ema if student_weights == "ema" else load_student
    student = loader(files["student"], unet_config, trust_pickles)
    log(f"  student UNet ({student_weights}): {student.converted_keys} tensors, {len(student.dropped_keys)} dropped")
    unknown = sorted(set(audioldm_config or {}) - {"vae_config", "vocoder_config", "mel_config"})
    if unknown:
        raise ValueError(f"--audioldm-config: unknown keys {unknown} (expected vae_config, vocoder_config, mel_config)")
    log(f"reading {files['audioldm']}")
    audioldm = convert_audioldm_checkpoint(files["audioldm"], trust_pickles, sigma_data=SIGMA_DATA, **(audioldm_config or {}))
    vae = audioldm.model
    log(f"  VAE + vocoder: {len(audioldm.converted_keys)} tensors, {len(audioldm.dropped_keys)} dropped, scale_factor {audioldm.scale_factor:.6g}")

    for conversion, name in ((teacher, "teacher"), (student, "student")):
        _check_unet(conversion.model, files[name], vae, t5)
        _compare_copy(conversion, files[name], t5, log)

    def pipeline(unet, scheduler):
        return SoundCTMPipeline(
            vae=vae,
            text_encoder=t5,
            tokenizer=tokenizer,
            transformer=unet,
            scheduler=scheduler,
            text_embedding="sequence",
            guidance_scale=GUIDANCE_SCALE,
        )

    return (
        pipeline(student.model, CTMScheduler(sigma_data=SIGMA_DATA)),
        pipeline(teacher.model, EDMHeunScheduler(sigma_data=SIGMA_DATA)),
        files,
    )


def card_facts(kind: str, student_weights: str = "ema", repo_id: str | None = None) -> CardFacts:
    """The model card facts of OUTPUT/student or OUTPUT/teacher."""
    common = dict(
        license="cc-by-4.0",  # the license of the Hub repo Sony/soundctm (its model card metadata)
        base_model=AUTHORS_REPO_16K,
        datasets=["AudioCaps"],
        training_data="AudioCaps (10 s clips at 16 kHz), the setup of the paper's 16 kHz experiments",
        text_encoder=f"{TEXT_ENCODER_REPO} encoder (T5EncoderModel, frozen), its last hidden states per token",
        tags=["soundctm-unet16k"],
        repo_id=repo_id,
    )
    hub = f"[{AUTHORS_REPO_16K}](https://huggingface.co/{AUTHORS_REPO_16K})"
    vae = f"AudioLDM-S's mel VAE and HiFi-GAN vocoder from `{AUDIOLDM_FILE}`"
    command = f"`python -m hub.convert --variant {VARIANT}`"
    if kind == "student":
        which = (
            f"`{STUDENT_EMA_FILE}` (the EMA network, μ = 0.999, which the paper reports)"
            if student_weights == "ema"
            else f"`{STUDENT_FILE}` (the non-EMA network, which the authors' inference script samples with)"
        )
        return CardFacts(
            title="SoundCTM-UNet 16 kHz student (AudioCaps), diffusers format",
            origin=(
                f"The authors' SoundCTM-UNet student {which} and {vae}, from {hub}, converted to safetensors and "
                f"diffusers components by {command}. The teacher it was distilled from is the EDM-retrained TANGO "
                "UNet (converted by the same command into a sibling folder)."
            ),
            results=_TABLE_HEAD + TEACHER_ROW + STUDENT_ROWS,
            refine_nu=2.0,  # Table 2's 16-step row
            **common,
        )
    if kind == "teacher":
        return CardFacts(
            title="SoundCTM-UNet 16 kHz teacher (EDM-retrained TANGO, AudioCaps), diffusers format",
            origin=(
                f"The authors' teacher `{TEACHER_FILE}` (TANGO's UNet retrained with EDM, σ_data = 0.25) and {vae}, "
                f"from {hub}, converted to safetensors and diffusers components by {command}; the UNet is diffusers' "
                "own `UNet2DConditionModel`."
            ),
            results=_TABLE_HEAD + TEACHER_ROW,
            **common,
        )
    raise ValueError(kind)


def convert(
    output: str | Path,
    fp16: bool = False,
    overwrite: bool = False,
    repo_id: str | None = None,
    student_weights: str = "ema",
    log=print,
    **kwargs,
) -> Path:
    """Converts and writes OUTPUT/student and OUTPUT/teacher all at once (nothing is left behind on failure)."""
    student, teacher, _ = build_pipelines(student_weights=student_weights, log=log, **kwargs)
    pipes = {"student": student, "teacher": teacher}
    with atomic_output_dir(output, overwrite) as tmp:
        log(f"writing {output}")
        for name, pipe in pipes.items():  # fp32 first: both pipelines share the VAE and the text encoder
            pipe.save_pretrained(tmp / name, safe_serialization=True)
        for name, pipe in pipes.items():
            if fp16:
                write_fp16_weights(pipe, tmp / name)
            sub_repo = f"{repo_id}-{name}" if repo_id else None
            write_model_card(tmp / name, card_facts(name, student_weights, sub_repo or str(Path(output) / name)))
    for path, size in list_files(output):
        log(f"  {path}  {human_size(size)}")
    return Path(output)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m hub.convert --variant unet16k", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--variant", required=True, choices=[VARIANT], help="the 16 kHz SoundCTM-UNet release")
    parser.add_argument("--output", required=True, help="the folder to write: OUTPUT/student and OUTPUT/teacher")
    parser.add_argument(
        "--source",
        default=AUTHORS_REPO_16K,
        help=f"a local folder with the authors' files (their Hub layout, or the files flat in one folder), or a Hub "
        f"repo id to download them from (default {AUTHORS_REPO_16K})",
    )
    parser.add_argument(
        "--text-encoder",
        default=None,
        help=f"a local transformers folder with the T5 encoder and its tokenizer (default: download {TEXT_ENCODER_REPO})",
    )
    parser.add_argument(
        "--student-weights",
        choices=sorted(STUDENT_FILES),
        default="ema",
        help=f"ema (default): {STUDENT_EMA_FILE}, the EMA student (μ = 0.999) that the paper reports; online: "
        f"{STUDENT_FILE}, the non-EMA weights that the authors' ctm_inference.py ends up sampling with",
    )
    parser.add_argument("--fp16", action="store_true", help="also write fp16 weights (diffusers variant 'fp16')")
    parser.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    parser.add_argument("--repo-id", default=None, help="Hub id prefix for the cards' usage snippets (REPO_ID-student, REPO_ID-teacher)")
    parser.add_argument("--revision", default=None, help="revision of the --source Hub repo")
    sizes = parser.add_argument_group("architecture (default: the released models')")
    sizes.add_argument("--unet-config", default=None, help="a UNet2DConditionModel config JSON (default TANGO's, hub/unet16k_checkpoints.py)")
    sizes.add_argument(
        "--audioldm-config",
        default=None,
        help="a JSON with any of vae_config, vocoder_config, mel_config for the AudioLDM conversion (default AudioLDM-S's)",
    )
    parser.add_argument(
        "--trust-pickles",
        action="store_true",
        help="read input pickles with full unpickling when torch.load(weights_only=True) refuses them (runs code from "
        "the files: only for files from a source you trust)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        convert(
            args.output,
            fp16=args.fp16,
            overwrite=args.overwrite,
            repo_id=args.repo_id,
            student_weights=args.student_weights,
            source=args.source,
            text_encoder=args.text_encoder,
            unet_config=_read_json_file(args.unet_config, "--unet-config"),
            audioldm_config=_read_json_file(args.audioldm_config, "--audioldm-config"),
            trust_pickles=args.trust_pickles,
            revision=args.revision,
        )
    except (ValueError, OSError) as err:
        print(f"hub.convert: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
