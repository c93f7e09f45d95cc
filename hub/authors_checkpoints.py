"""The authors' released SoundCTM-DiT checkpoints (Hugging Face repo `koichisaito/soundctm_dit`): where the files
are, how their pickles are laid out, and how each one becomes a component of a `SoundCTMPipeline`.

What the files hold (read from the authors' code, github.com/koichi-saito-sony/soundctm_dit_iclr):

- `model_checkpoints/soundctm/<variant>_ema_0999_<step>.pt`: `target_model.state_dict()` of their `SA_EDM`
  wrapper, saved by `ctm/train_util.py` — the EMA ("target", μ = 0.999) network, which `demo.py` loads with a
  strict `load_state_dict`. Keys: `dit.*` (the DiT) and `text_encoder.model.*` (a frozen copy of the whole
  laion CLAP, audio branch included, which we drop: the text encoder comes from the CLAP checkpoint itself).
- `model_checkpoints/soundctm/z_stats.pth`: `{'z_mean': (64,), 'z_std': (64,)}`, the per-channel latent
  statistics; sampling decodes `2 · z_std · z + z_mean`, i.e. `scaling_factor` 0.5 (= σ_d) in the VAE config.
- `utils_checkpoints/vae/gaussiandac/weights.pth`: audiotools `BaseModel.save(..., package=False)` format,
  `{'state_dict': ..., 'metadata': {'kwargs': <GaussianDAC constructor arguments>}}`, weight norm not yet removed
  (`weight_g`, `weight_v` per convolution).
- `utils_checkpoints/clap/630k-audioset-best.pt`: laion-clap training checkpoint, `{'state_dict': {'module.…'}}`;
  the text branch is a `RobertaModel` (roberta-base) plus a `Linear-ReLU-Linear` projection to 512; v1 models
  condition on the projected, v2 on the pooled (pre-projection) output, both L2-normalised.

Every reader here uses `torch.load(weights_only=True)`; see `load_pickle` for what that cannot read.
"""

import pickle
import pickletools
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import ClapTextConfig, ClapTextModelWithProjection

from soundctm import AutoencoderGaussianDAC, SoundCTMDiTModel
from soundctm.transformer_soundctm_dit import convert_authors_state_dict

AUTHORS_REPO = "koichisaito/soundctm_dit"
CHECKPOINT_DIR = "model_checkpoints/soundctm"
Z_STATS_FILE = f"{CHECKPOINT_DIR}/z_stats.pth"
VAE_FILE = "utils_checkpoints/vae/gaussiandac/weights.pth"
CLAP_FILE = "utils_checkpoints/clap/630k-audioset-best.pt"

# The authors' configs/dit_config/dit_v1.json and dit_v2.json (their keys; `global_cond_dim` and
# `project_cond_tokens: false` are implied by our DiT).
DIT_V1 = {"io_channels": 64, "embed_dim": 1536, "depth": 24, "num_heads": 24, "cond_token_dim": 512}
DIT_V2 = {**DIT_V1, "cond_token_dim": 768}
DIT_CONFIG_KEYS = ("io_channels", "embed_dim", "depth", "num_heads", "cond_token_dim")

# The text branch of laion-clap `630k-audioset-best.pt`: `RobertaModel.from_pretrained('roberta-base')` (whose
# LayerNorm eps is 1e-5, not ClapTextConfig's default 1e-12) and a 768 → 512 → 512 ReLU projection.
ROBERTA_BASE_TEXT_CONFIG = dict(
    vocab_size=50265,
    hidden_size=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    intermediate_size=3072,
    hidden_act="gelu",
    max_position_embeddings=514,
    type_vocab_size=1,
    layer_norm_eps=1e-5,
    pad_token_id=1,
    bos_token_id=0,
    eos_token_id=2,
    projection_dim=512,
    projection_hidden_act="relu",
)
ROBERTA_TOKENIZER_REPO = "FacebookAI/roberta-base"  # what the authors' `RobertaTokenizer.from_pretrained('roberta-base')` resolves to
TOKENIZER_MAX_LENGTH = 77  # the authors pad/truncate CLAP prompts to 77 tokens


@dataclass(frozen=True)
class Variant:
    """One released model. `checkpoints`: its file name in `CHECKPOINT_DIR`, or globs when the name is not known."""

    name: str
    checkpoints: tuple[str, ...]
    dit_config: dict
    text_embedding: str
    datasets: tuple[str, ...]
    training_data: str
    notes: str = ""


VARIANTS = {
    "ac_v1_iclr": Variant(
        name="ac_v1_iclr",
        checkpoints=("ac_v1_iclr_ema_0999_010446.pt",),
        dit_config=DIT_V1,
        text_embedding="projected",
        datasets=("AudioCaps",),
        training_data="AudioCaps (the setup of the ICLR 2025 paper)",
        notes="Conditioned on CLAP's projected text embedding (512-d), as in the paper.",
    ),
    "ac_v2": Variant(
        name="ac_v2",
        checkpoints=("ac_v2_ema_0999_030000.pt",),
        dit_config=DIT_V2,
        text_embedding="pooled",
        datasets=("AudioCaps",),
        training_data="AudioCaps",
        notes="Conditioned on CLAP's pooled text output before the projection (768-d), as the Stable Audio models are.",
    ),
    "as_ac_v2": Variant(
        name="as_ac_v2",
        # The authors' demo spells this variant `ac_as_v2`, and their download code has no file name for it (it
        # fetches the ac_v2 files for any "v2"): the checkpoint is found by pattern, under either spelling.
        checkpoints=("as_ac_v2_ema_*.pt", "ac_as_v2_ema_*.pt"),
        dit_config=DIT_V2,
        text_embedding="pooled",
        datasets=("AudioSet", "AudioCaps"),
        training_data="AudioSet and AudioCaps",
        notes="Conditioned on CLAP's pooled text output before the projection (768-d).",
    ),
}


def get_variant(name: str) -> Variant:
    if name not in VARIANTS:
        raise ValueError(f"variant must be one of {sorted(VARIANTS)}, got {name!r}")
    return VARIANTS[name]


# ---------------------------------------------------------------------------------------------------------- files
@dataclass
class SourceFiles:
    checkpoint: Path
    z_stats: Path
    vae_weights: Path
    clap: Path


def _search_patterns(variant: Variant) -> dict[str, tuple[str, str, tuple[str, ...]]]:
    """field -> (what, command-line flag, glob patterns tried in order below the source folder): the Hub layout first,
    then the file anywhere below (the authors' demo keeps them in ckpt/models and ckpt/utils)."""
    return {
        "checkpoint": ("SoundCTM checkpoint", "--checkpoint", tuple(f"{CHECKPOINT_DIR}/{p}" for p in variant.checkpoints) + tuple(f"**/{p}" for p in variant.checkpoints)),
        "z_stats": ("latent statistics", "--z-stats", (Z_STATS_FILE, "**/z_stats.pth")),
        "vae_weights": ("VAE weights", "--vae-weights", (VAE_FILE, "**/gaussiandac/weights.pth", "**/weights.pth")),
        "clap": ("CLAP checkpoint", "--clap-checkpoint", (CLAP_FILE, "**/630k-audioset-best.pt")),
    }


def _find(root: Path, what: str, flag: str, patterns: tuple[str, ...]) -> Path:
    for pattern in patterns:
        matches = sorted(p for p in root.glob(pattern) if p.is_file())
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            listed = ", ".join(str(m.relative_to(root)) for m in matches)
            raise ValueError(f"{what}: several files match {pattern!r} under {root} ({listed}); pass {flag} FILE")
    raise FileNotFoundError(f"{what} not found under {root} (looked for {patterns[0]}); pass {flag} FILE")


def hub_reachable(timeout: float = 5.0) -> bool:
    """One quick request to the Hub, so that a machine without network fails at once instead of after
    huggingface_hub's retries. False under HF_HUB_OFFLINE."""
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    if constants.is_offline_mode():
        return False
    try:
        get_session().head(constants.ENDPOINT, timeout=timeout)
        return True
    except Exception:
        return False


def download_authors_files(repo_id: str, variant: Variant, revision: str | None = None) -> Path:
    """The variant's four files from the authors' Hub repo (from the local cache when the Hub cannot be reached).
    Returns the snapshot folder, laid out as the repo."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

    patterns = [f"{CHECKPOINT_DIR}/{p}" for p in variant.checkpoints] + [Z_STATS_FILE, VAE_FILE, CLAP_FILE]
    online = hub_reachable()
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns, local_files_only=not online))
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as err:
        reason = "HF_HUB_OFFLINE is set" if constants.is_offline_mode() else "the Hub cannot be reached"
        raise ConnectionError(
            f"cannot download the {variant.name} files from {repo_id}: {reason} and they are not in the local cache "
            f"({type(err).__name__}). Download them where there is a network (`hf download {repo_id} --local-dir DIR`) "
            "and pass --source DIR."
        ) from None
    except HfHubHTTPError as err:
        raise ConnectionError(f"cannot download the {variant.name} files from {repo_id}: {err}") from None


def resolve_source_files(source: str, variant: Variant, revision: str | None = None, **overrides) -> SourceFiles:
    """The four input files: each from `overrides` (checkpoint=, z_stats=, vae_weights=, clap=) when given, else
    found below `source` — a local folder, or a Hub repo id whose files are downloaded."""
    patterns = _search_patterns(variant)
    given = {name: Path(overrides[name]) for name in patterns if overrides.get(name)}
    for name, path in given.items():
        if not path.is_file():
            raise FileNotFoundError(f"{patterns[name][0]} ({patterns[name][1]}): {path} does not exist")
    if len(given) < len(patterns):
        if Path(source).is_dir():
            root = Path(source)
        elif re.fullmatch(r"[\w.-]+/[\w.-]+", source) and not Path(source).exists() and not source.startswith((".", "/")):
            root = download_authors_files(source, variant, revision)
        else:
            raise FileNotFoundError(f"--source {source!r} is neither an existing folder nor a Hub repo id (owner/name)")
        for name, (what, flag, globs) in patterns.items():
            if name not in given:
                given[name] = _find(root, what, flag, globs)
    return SourceFiles(**given)


# ---------------------------------------------------------------------------------------------------------- pickles
# numpy scalars and arrays inside training checkpoints (epoch counters, metrics) are plain data: allow their
# reconstruction under both module paths numpy has used (`numpy.core` before 2.0, `numpy._core` after).
_np_multiarray = (getattr(np, "_core", None) or np.core).multiarray
_NUMPY_GLOBALS = [np.dtype, np.ndarray] + [
    (function, f"numpy.{core}.multiarray.{function.__name__}")
    for function in (_np_multiarray.scalar, _np_multiarray._reconstruct)
    for core in ("core", "_core")
] + [type(np.dtype(t)) for t in ("f2", "f4", "f8", "i4", "i8", "u1", "b1")]


def _unpickling_cause(message: str) -> str:
    """The line of torch's weights-only error that says what was refused, with pickle opcodes named."""
    cause = next((line.strip() for line in message.splitlines() if "Unsupported" in line), message.splitlines()[0])
    opcode = re.search(r"Unsupported operand (\d+)", cause)
    if opcode and chr(int(opcode.group(1))) in pickletools.code2op:
        op = pickletools.code2op[chr(int(opcode.group(1)))]
        cause = f"pickle opcode {op.name} of pickle protocol {op.proto}, which the weights-only unpickler does not read"
    return cause


def load_pickle(path: str | Path, what: str, trust_pickles: bool = False):
    """
    Reads a PyTorch pickle with `torch.load(weights_only=True)` (tensors, containers, numbers and strings, numpy
    scalars/arrays; no code runs). A file that needs anything else — a pickled class such as an audiotools or
    argbind object, or opcodes of pickle protocol ≥ 4, which the weights-only unpickler does not read — is refused
    with a `ValueError` naming the file and the cause, unless `trust_pickles=True` (then plain `torch.load`, which
    can run code from the file: only for files from a source you trust).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what}: {path} does not exist")
    mmap = zipfile.is_zipfile(path)  # the zip format can be memory-mapped: a 5 GB checkpoint is not read into RAM
    try:
        with torch.serialization.safe_globals(_NUMPY_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        if trust_pickles:
            return torch.load(path, map_location="cpu", weights_only=False, mmap=mmap)
        cause = _unpickling_cause(str(err))
        raise ValueError(
            f"{path}: {what} cannot be read with torch.load(weights_only=True) ({cause}). If the file comes from a "
            "source you trust (e.g. the authors' Hugging Face repo), rerun with --trust-pickles."
        ) from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile) as err:
        raise ValueError(f"{path}: {what} is not a readable PyTorch file (truncated or corrupt?): {err}") from None


def _state_dict_of(obj, path: Path, what: str) -> dict:
    """The tensor dict of a checkpoint: the object itself or its 'state_dict' entry; a common 'module.' prefix
    (DataParallel / DDP) is removed."""
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path}: {what} is not a state dict (a dict of tensors, or one under 'state_dict')")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def _load_strict(model: torch.nn.Module, state_dict: dict, path: Path, source_key: dict[str, str]) -> None:
    """`load_state_dict(strict=True)`, with shape mismatches and missing keys reported by the source file's key."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    if missing:
        raise ValueError(f"{path}: no source key for {missing[0]!r} ({len(missing)} parameters of the target unset)")
    for key, value in state_dict.items():
        if key in expected and tuple(value.shape) != tuple(expected[key].shape):
            raise ValueError(
                f"{path}: {source_key.get(key, key)!r} has shape {tuple(value.shape)}, the converted model expects "
                f"{tuple(expected[key].shape)} for {key!r} — a checkpoint of another model size or variant?"
            )
    model.load_state_dict(state_dict, strict=True)


def _renamed(state_dict: dict, renames: list[tuple[str, str]], dropped: list[str], path: Path, what: str):
    """Applies regex `renames` to every key; keys matching a `dropped` pattern are listed, any other key is an
    error naming it. Returns (new_state_dict, source_key_of_new_key, dropped_keys)."""
    out, source, gone = {}, {}, []
    for key, value in state_dict.items():
        if any(re.match(p, key) for p in dropped):
            gone.append(key)
            continue
        for pattern, replacement in renames:
            if re.match(pattern, key):
                new = re.sub(pattern, replacement, key)
                out[new], source[new] = value, key
                break
        else:
            raise ValueError(f"{path}: {key!r} is not a key of {what}")
    return out, source, gone


# ---------------------------------------------------------------------------------------------------------- the DiT
def dit_model_config(dit_config: dict, dit_state_dict: dict, sample_size: int) -> dict:
    """`SoundCTMDiTModel` arguments from the authors' DiT config; the two sizes that their config files leave
    implicit (Fourier features, fixed at 256 there, and the feed-forward multiplier, 4) are read off the weights."""
    missing = [k for k in DIT_CONFIG_KEYS if k not in dit_config]
    if missing:
        raise ValueError(f"DiT config is missing {missing}; expected the authors' keys {list(DIT_CONFIG_KEYS)}")
    width, heads = int(dit_config["embed_dim"]), int(dit_config["num_heads"])
    if width % heads:
        raise ValueError(f"DiT config: embed_dim {width} is not a multiple of num_heads {heads}")
    fourier = dit_state_dict.get("timestep_features.weight")
    ff_in = dit_state_dict.get("transformer.layers.0.ff.ff.0.proj.weight")
    return dict(
        in_channels=int(dit_config["io_channels"]),
        num_layers=int(dit_config["depth"]),
        attention_head_dim=width // heads,
        num_attention_heads=heads,
        cross_attention_dim=int(dit_config["cond_token_dim"]),
        timestep_features_dim=2 * fourier.shape[0] if fourier is not None else 256,
        ff_mult=ff_in.shape[0] // (2 * width) if ff_in is not None else 4,
        sample_size=int(sample_size),
        is_student=True,
    )


@dataclass
class DiTConversion:
    model: SoundCTMDiTModel
    converted_keys: int
    dropped_keys: list[str]
    embedded_clap: dict  # the checkpoint's CLAP copy (keys relative to the CLAP model), for a consistency check


def convert_dit(path: Path, dit_config: dict, sample_size: int = 432, trust_pickles: bool = False) -> DiTConversion:
    """The EMA DiT of an `<variant>_ema_*.pt` file (a state dict of the authors' `SA_EDM`) as a student
    `SoundCTMDiTModel`, with every key of the file either converted or listed as dropped."""
    path = Path(path)
    sa_edm = _state_dict_of(load_pickle(path, "SoundCTM checkpoint", trust_pickles), path, "SoundCTM checkpoint")
    dit, clap_copy, dropped = {}, {}, []
    for key, value in sa_edm.items():
        if key.startswith("dit."):
            dit[key[len("dit."):]] = value
        elif key.startswith("text_encoder."):
            dropped.append(key)  # the frozen CLAP copy inside SA_EDM
            if key.startswith("text_encoder.model."):
                clap_copy[key[len("text_encoder.model."):]] = value
        else:
            raise ValueError(f"{path}: {key!r} is neither 'dit.*' nor 'text_encoder.*': not a SoundCTM-DiT SA_EDM checkpoint")
    if not dit:
        raise ValueError(f"{path}: no 'dit.*' keys (first key {next(iter(sa_edm))!r}): not a SoundCTM-DiT checkpoint")
    config = dit_model_config(dit_config, dit, sample_size)
    try:
        converted, dit_dropped = convert_authors_state_dict(dit, config)
    except (KeyError, ValueError) as err:
        message = err.args[0] if err.args else str(err)
        raise ValueError(f"{path}: dit.{message}") from None
    source_key = {}
    by_id = {id(v): k for k, v in dit.items()}
    for new_key, value in converted.items():
        source_key[new_key] = "dit." + by_id[id(value)]
    model = SoundCTMDiTModel(**config)
    _load_strict(model, converted, path, source_key)
    return DiTConversion(model.eval(), len(converted), dropped + ["dit." + k for k in dit_dropped], clap_copy)


# ---------------------------------------------------------------------------------------------------------- the VAE
_GAUSSIAN_DAC_KWARGS = ("encoder_dim", "encoder_rates", "latent_dim", "decoder_dim", "decoder_rates", "sample_rate", "double_z")


def fold_weight_norm(g: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """weight = g · v / ‖v‖ with the norm over every dimension but 0, as `torch.nn.utils.weight_norm(dim=0)`
    (its default, used by DAC's WNConv1d and WNConvTranspose1d: for a transposed convolution dim 0 is the input
    channel) and `remove_weight_norm` compute it."""
    v = v.float()
    return (g.float() * v / v.norm(dim=tuple(range(1, v.ndim)), keepdim=True)).to(v.dtype)


def fold_weight_norms(state_dict: dict, path: Path) -> tuple[dict, dict]:
    """Replaces every (`weight_g`, `weight_v`) pair — or `parametrizations.weight.original0/1` of the newer API —
    by the folded `weight`. Returns (state_dict, source key of each new key)."""
    out, source = {}, {}
    for key, value in state_dict.items():
        for g_suffix, v_suffix in (("weight_g", "weight_v"), ("parametrizations.weight.original0", "parametrizations.weight.original1")):
            if key.endswith(v_suffix):
                break
            if key.endswith(g_suffix):
                base = key[: -len(g_suffix)]
                if base + v_suffix not in state_dict:
                    raise ValueError(f"{path}: {key!r} has no matching {base + v_suffix!r}")
                out[base + "weight"], source[base + "weight"] = fold_weight_norm(value, state_dict[base + v_suffix]), key
                break
        else:
            out[key], source[key] = value, key
    return out, source


def read_latent_stats(path: Path, latent_dim: int | None = None, trust_pickles: bool = False) -> tuple[list, list]:
    """`z_stats.pth` → (latents_mean, latents_std) as lists of floats."""
    path = Path(path)
    stats = load_pickle(path, "latent statistics (z_stats.pth)", trust_pickles)
    if not isinstance(stats, dict):
        raise ValueError(f"{path}: expected a dict with 'z_mean' and 'z_std', got {type(stats).__name__}")
    out = []
    for key in ("z_mean", "z_std"):
        if key not in stats:
            raise ValueError(f"{path}: no key {key!r} (keys: {sorted(map(str, stats))})")
        value = torch.as_tensor(stats[key]).float().reshape(-1)
        if latent_dim is not None and value.numel() != latent_dim:
            raise ValueError(f"{path}: {key!r} has {value.numel()} entries, the VAE has latent_dim={latent_dim}")
        if not torch.isfinite(value).all() or (key == "z_std" and not (value > 0).all()):
            raise ValueError(f"{path}: {key!r} must be finite{' and positive' if key == 'z_std' else ''}")
        out.append(value.tolist())
    return out[0], out[1]


def convert_vae(path: Path, z_stats_path: Path, trust_pickles: bool = False) -> AutoencoderGaussianDAC:
    """The Gaussian DAC of an audiotools `weights.pth` (constructor arguments from its metadata, weight norm folded)
    with the latent statistics of `z_stats.pth` in its config."""
    path = Path(path)
    ckpt = load_pickle(path, "VAE weights (weights.pth)", trust_pickles)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "metadata" not in ckpt:
        raise ValueError(f"{path}: expected audiotools' {{'state_dict', 'metadata'}} layout of a GaussianDAC weights.pth")
    kwargs = ckpt["metadata"].get("kwargs") if isinstance(ckpt["metadata"], dict) else None
    if not isinstance(kwargs, dict):
        raise ValueError(f"{path}: 'metadata' has no 'kwargs' dict (the GaussianDAC constructor arguments)")
    for key in kwargs:
        if key not in _GAUSSIAN_DAC_KWARGS:
            raise ValueError(f"{path}: metadata['kwargs'] has {key!r}, not an argument of the authors' GaussianDAC")
    if not kwargs.get("double_z", True):
        raise ValueError(f"{path}: metadata['kwargs']['double_z'] is False: a deterministic DAC, not the Gaussian VAE")
    encoder_dim = int(kwargs.get("encoder_dim", 64))
    encoder_rates = [int(r) for r in kwargs.get("encoder_rates", (2, 4, 8, 8))]
    latent_dim = kwargs.get("latent_dim", 8)
    latent_dim = int(latent_dim) if latent_dim is not None else encoder_dim * 2 ** len(encoder_rates)
    latents_mean, latents_std = read_latent_stats(z_stats_path, latent_dim, trust_pickles)
    try:
        vae = AutoencoderGaussianDAC(
            encoder_dim=encoder_dim,
            encoder_rates=encoder_rates,
            latent_dim=latent_dim,
            decoder_dim=int(kwargs.get("decoder_dim", 1536)),
            decoder_rates=[int(r) for r in kwargs.get("decoder_rates", (8, 8, 4, 2))],
            sampling_rate=int(kwargs.get("sample_rate", 44100)),
            audio_channels=1,
            latents_mean=latents_mean,
            latents_std=latents_std,
            scaling_factor=0.5,  # the authors decode 2·z_std·z + z_mean
        )
    except ValueError as err:
        raise ValueError(f"{path}: metadata['kwargs'] {kwargs} do not make a valid VAE: {err}") from None
    state_dict, source = fold_weight_norms(_state_dict_of(ckpt, path, "VAE weights"), path)
    unexpected = sorted(set(state_dict) - set(vae.state_dict()))
    if unexpected:
        raise ValueError(f"{path}: {source[unexpected[0]]!r} is not a parameter of the Gaussian DAC")
    _load_strict(vae, state_dict, path, source)
    return vae.eval()


# ---------------------------------------------------------------------------------------------------------- CLAP text
CLAP_TEXT_RENAMES = [
    (r"^text_branch\.", "text_model."),
    (r"^text_projection\.0\.", "text_projection.linear1."),
    (r"^text_projection\.2\.", "text_projection.linear2."),
]
CLAP_NOT_TEXT = [r"^audio_branch\.", r"^audio_projection\.", r"^audio_transform\.", r"^text_transform\.", r"^logit_scale_[at]$"]
# Buffers of the RoBERTa embeddings: constants, not weights (old transformers saved position_ids).
CLAP_CONSTANT_BUFFERS = ("text_model.embeddings.position_ids", "text_model.embeddings.token_type_ids")


def convert_clap_text(path: Path, text_config: dict | None = None, trust_pickles: bool = False):
    """The text branch of a laion-clap checkpoint as `ClapTextModelWithProjection`. Returns (model, dropped keys)."""
    path = Path(path)
    state = _state_dict_of(load_pickle(path, "CLAP checkpoint", trust_pickles), path, "CLAP checkpoint")
    for required in ("text_branch.embeddings.word_embeddings.weight", "text_projection.0.weight"):
        if required not in state:
            raise ValueError(f"{path}: no key {required!r}: not a laion-clap checkpoint with a RoBERTa text branch")
    renamed, source, dropped = _renamed(state, CLAP_TEXT_RENAMES, CLAP_NOT_TEXT, path, "laion-clap's CLAP model")
    model = ClapTextModelWithProjection(ClapTextConfig(**(text_config or ROBERTA_BASE_TEXT_CONFIG)))
    for name in CLAP_CONSTANT_BUFFERS:
        constant = model.state_dict()[name]
        if name in renamed:
            if renamed[name].shape[-1] < constant.shape[-1] or not torch.equal(renamed[name][..., : constant.shape[-1]], constant):
                raise ValueError(f"{path}: {source[name]!r} is not the constant buffer it should be")
            dropped.append(source.pop(name))
        renamed[name] = constant
    _load_strict(model, renamed, path, source)
    return model.eval(), dropped


def embedded_clap_matches(clap_copy: dict, text_encoder: ClapTextModelWithProjection) -> tuple[bool, float]:
    """Whether the CLAP copy stored inside the SoundCTM checkpoint has the same text branch as the converted text
    encoder (the authors froze CLAP, so it must). Returns (same keys present and equal, max |difference|).
    A tensor of another shape than the converted one's is an error naming its key (as stored in the checkpoint,
    `text_encoder.model.` + the key of `clap_copy`): the copy and the CLAP checkpoint are then different models."""
    converted = text_encoder.state_dict()
    renamed, source_key = {}, {}
    for key, value in clap_copy.items():
        for pattern, replacement in CLAP_TEXT_RENAMES:
            if re.match(pattern, key):
                renamed[re.sub(pattern, replacement, key)] = value
                source_key[re.sub(pattern, replacement, key)] = key
    shared = [k for k in renamed if k in converted and k not in CLAP_CONSTANT_BUFFERS]
    if not shared:
        return False, float("inf")
    for k in shared:
        if renamed[k].shape != converted[k].shape:
            raise ValueError(
                f"the CLAP copy inside the checkpoint holds 'text_encoder.model.{source_key[k]}' of shape "
                f"{tuple(renamed[k].shape)}, the CLAP checkpoint's tensor is {tuple(converted[k].shape)}: the two are "
                "different CLAP models (wrong --clap-checkpoint for this checkpoint?)"
            )
    diff = max(float((renamed[k].float() - converted[k].float()).abs().max()) for k in shared)
    return diff == 0.0, diff


def load_clap_tokenizer(path: str | None, text_config: ClapTextConfig):
    """CLAP's RoBERTa tokenizer from a local folder (vocab.json + merges.txt, or a saved tokenizer), or downloaded
    from `FacebookAI/roberta-base` when `path` is None; `model_max_length` 77 as the authors truncate."""
    from transformers import RobertaTokenizer

    if path is not None:
        if not Path(path).is_dir():
            raise FileNotFoundError(f"--tokenizer {path}: not a folder")
        source, local_only = str(path), True
    else:
        source, local_only = ROBERTA_TOKENIZER_REPO, not hub_reachable()
    try:
        tokenizer = RobertaTokenizer.from_pretrained(source, local_files_only=local_only)
    except OSError as err:
        raise ValueError(f"cannot load the RoBERTa tokenizer from {source}: {err}") from None
    # transformers builds an empty tokenizer when the files are missing instead of failing: check it is the one
    # the CLAP text model was trained with.
    if len(tokenizer) != text_config.vocab_size:
        hint = " (offline, and not in the local cache: pass --tokenizer DIR)" if path is None and local_only else ""
        raise ValueError(
            f"tokenizer from {source} has {len(tokenizer)} tokens but the CLAP text model has vocab_size="
            f"{text_config.vocab_size}: not roberta-base's tokenizer{hint}"
        )
    if tokenizer.pad_token_id != text_config.pad_token_id:
        raise ValueError(f"tokenizer from {source}: pad_token_id {tokenizer.pad_token_id} != {text_config.pad_token_id}")
    tokenizer.model_max_length = TOKENIZER_MAX_LENGTH
    for loading_option in ("local_files_only", "is_local"):  # not properties of the tokenizer: keep them out of its saved config
        tokenizer.init_kwargs.pop(loading_option, None)
    return tokenizer
