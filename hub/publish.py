"""Export a SoundCTM pipeline folder (converted by hub.convert, or a student/teacher from distill/) as a Hub repo —
safetensors weights, configs, the pipeline's code files, a model card — and upload it.

    python -m hub.publish FOLDER --repo-id you/soundctm-ac-v2 --dry-run        # list what would be uploaded
    python -m hub.publish FOLDER --repo-id you/soundctm-ac-v2                  # create the repo (if needed), upload
    python -m hub.publish FOLDER --repo-id you/soundctm-student --base-model you/teacher --dataset you/sounds \\
        --license cc-by-4.0 --training-data "my sound library" --space-repo-id you/soundctm-demo

The exported repo loads with `DiffusionPipeline.from_pretrained(repo_id, trust_remote_code=True)` (nothing installed but
diffusers and transformers). With --space-repo-id, a Gradio Space is exported too: README (sdk gradio, app_file
app.py), the project's app.py, the `soundctm` package code and requirements.txt; the Space's SOUNDCTM_MODEL variable
points it at the model repo. Uploads use huggingface_hub's create_repo(exist_ok=True) and upload_folder; the token
comes from --token, $HF_TOKEN or `hf auth login`.
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from soundctm.cli import pipeline_class
from soundctm.pipeline import write_code_files

from .folders import atomic_output_dir, human_size, list_files
from .model_card import CardFacts, add_card_arguments, describe_pipeline, facts_from_args, write_model_card

ROOT = Path(__file__).resolve().parents[1]
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
SPACE_MODEL_VARIABLE = "SOUNDCTM_MODEL"  # read by app.py (soundctm.cli.ENV_MODEL)


def _files_to_copy(folder: Path) -> list[Path]:
    """What belongs in the repo: model_index.json and the component folders it names. Not the code files (re-written
    from the installed package), the card (re-generated), nor anything else beside the pipeline (a training run's
    `checkpoint-*` states, logs). Pickled weights in a component are refused."""
    with open(folder / "model_index.json") as f:
        components = [name for name, entry in json.load(f).items() if isinstance(entry, list) and not name.startswith("_")]
    out = [Path("model_index.json")]
    for name in components:
        for path in sorted((folder / name).rglob("*")):
            rel = path.relative_to(folder)
            if not path.is_file() or any(part.startswith(".") or part == "__pycache__" for part in rel.parts):
                continue
            if path.suffix in PICKLE_SUFFIXES:
                raise ValueError(f"{path}: pickled weights cannot be published; save the pipeline with safetensors")
            if path.suffix != ".py":
                out.append(rel)
    return out


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)  # weights are large: a hard link costs nothing and is never modified in place
    except OSError:
        shutil.copy2(src, dst)


def export_repo(folder: str | Path, export_dir: str | Path, facts: CardFacts, overwrite: bool = False) -> Path:
    """Writes the Hub repo folder of a SoundCTM pipeline `folder` (a `SoundCTMPipeline` or a
    `SoundCTMStableAudioPipeline` folder) into `export_dir` (all at once): its weights and configs, the current code
    files of the `soundctm` package with `model_index.json` pointing at them, and the model card. The exported folder
    is loaded once, with the pipeline class it was saved with, before it is moved into place."""
    folder = Path(folder)
    describe_pipeline(folder)  # a SoundCTM pipeline folder, or a clear error
    files = _files_to_copy(folder)
    with atomic_output_dir(export_dir, overwrite) as tmp:
        for rel in files:
            _link_or_copy(folder / rel, tmp / rel)
        pipe = pipeline_class(str(tmp)).from_pretrained(tmp)
        write_code_files(pipe, tmp)
        write_model_card(tmp, facts)
    return Path(export_dir)


def _project_requirements() -> list[str]:
    """The project's runtime dependencies and its `app` extra, from pyproject.toml."""
    import tomllib

    with open(ROOT / "pyproject.toml", "rb") as f:
        project = tomllib.load(f)["project"]
    return list(project["dependencies"]) + list(project.get("optional-dependencies", {}).get("app", []))


def export_space(space_dir: str | Path, model_repo_id: str, app_file: str | Path, title: str, overwrite: bool = False) -> Path:
    """A Gradio Space folder that runs the project's `app_file` on `model_repo_id`: README.md (Space card),
    app.py, the `soundctm` package code and requirements.txt."""
    from huggingface_hub import SpaceCard, SpaceCardData

    import soundctm

    app_file = Path(app_file)
    if not app_file.is_file():
        raise FileNotFoundError(f"--app-file {app_file}: no such file (the Gradio app of the Space)")
    try:
        import gradio

        sdk_version = gradio.__version__
    except ImportError:
        sdk_version = None
    with atomic_output_dir(space_dir, overwrite) as tmp:
        shutil.copy2(app_file, tmp / "app.py")
        for module in _local_imports(app_file):  # e.g. app_control.py, the app's editing tabs
            shutil.copy2(module, tmp / module.name)
        package = Path(soundctm.__file__).parent
        shutil.copytree(package, tmp / "soundctm", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        (tmp / "requirements.txt").write_text("\n".join(_project_requirements()) + "\n")
        data = SpaceCardData(
            title=title,
            sdk="gradio",
            sdk_version=sdk_version,
            app_file="app.py",
            license="mit",
            models=[model_repo_id],
            tags=["soundctm", "text-to-audio"],
            short_description="SoundCTM text-to-sound: 1-step drafts, N-step refinement",
        )
        body = (
            f"# {title}\n\nA Gradio demo of [{model_repo_id}](https://huggingface.co/{model_repo_id}): 1-step drafts "
            "from a prompt, and the same sound refined with more steps.\n\nThe model is chosen by the Space variable "
            f"`{SPACE_MODEL_VARIABLE}` (set to `{model_repo_id}` by `python -m hub.publish`).\n"
        )
        SpaceCard(f"---\n{data.to_yaml()}\n---\n\n{body}").save(tmp / "README.md")
    return Path(space_dir)


def _local_imports(app_file: Path) -> list[Path]:
    """The modules beside `app_file` that it imports at top level (they must travel with it into the Space)."""
    import ast

    names = set()
    for node in ast.parse(app_file.read_text()).body:
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return sorted(p for p in (app_file.parent / f"{name}.py" for name in names) if p.is_file())


def upload(folder: str | Path, repo_id: str, repo_type: str = "model", private: bool | None = None, token=None,
           endpoint: str | None = None, commit_message: str | None = None, **create_kwargs) -> str:
    """create_repo(exist_ok=True) + upload_folder; returns the commit URL."""
    from huggingface_hub import HfApi, constants

    if constants.is_offline_mode():
        raise ConnectionError("HF_HUB_OFFLINE is set: cannot upload (use --dry-run to see what would be uploaded)")
    api = HfApi(endpoint=endpoint, token=token)
    try:
        api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True, **create_kwargs)
        info = api.upload_folder(
            repo_id=repo_id, repo_type=repo_type, folder_path=str(folder), commit_message=commit_message or "Upload SoundCTM pipeline"
        )
    except (ValueError, OSError):
        raise
    except Exception as err:  # the HTTP client's own errors (connection refused, timeouts) are not OSErrors
        raise ConnectionError(f"upload to {repo_id} at {api.endpoint} failed: {type(err).__name__}: {err}") from err
    return info.commit_url


def _print_listing(title: str, folder: Path) -> None:
    files = list_files(folder)
    print(f"{title} ({len(files)} files, {human_size(sum(size for _, size in files))}):")
    for path, size in files:
        print(f"  {path}  {human_size(size)}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m hub.publish", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("folder", help="a SoundCTM pipeline folder (saved by SoundCTMPipeline or SoundCTMStableAudioPipeline "
                        ".save_pretrained, or hub.convert)")
    parser.add_argument("--repo-id", required=True, help="the model repo to create/upload to, owner/name")
    parser.add_argument("--export-dir", default=None, help="keep the exported repo folder here (default: a temporary folder)")
    parser.add_argument("--overwrite", action="store_true", help="replace --export-dir if it exists")
    parser.add_argument("--dry-run", action="store_true", help="export and list what would be uploaded; no network")
    parser.add_argument("--private", action="store_true", default=None, help="create the repo private")
    parser.add_argument("--commit-message", default=None)
    parser.add_argument("--token", default=None, help="Hub token (default: $HF_TOKEN or the saved login)")
    parser.add_argument("--endpoint", default=None, help="Hub endpoint (default: $HF_ENDPOINT or https://huggingface.co)")
    space = parser.add_argument_group("Gradio Space (optional)")
    space.add_argument("--space-repo-id", default=None, help="also export/upload a Gradio Space running app.py on the model")
    space.add_argument("--app-file", default=str(ROOT / "app.py"), help="the Space's app (default: the project's app.py)")
    space.add_argument("--space-title", default="SoundCTM text-to-sound", help="title of the Space")
    add_card_arguments(parser, repo_id=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.repo_id is not None and args.repo_id.count("/") != 1:
        print(f"hub.publish: error: --repo-id must be owner/name, got {args.repo_id!r}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="soundctm-publish-") as scratch:
        export_dir = Path(args.export_dir) if args.export_dir else Path(scratch) / "repo"
        space_dir = export_dir.with_name(export_dir.name + "-space")
        try:
            facts = facts_from_args(args.folder, args).updated(repo_id=args.repo_id)
            export_repo(args.folder, export_dir, facts, overwrite=args.overwrite)
            if args.space_repo_id:
                export_space(space_dir, args.repo_id, args.app_file, args.space_title, overwrite=args.overwrite)
            if args.dry_run:
                _print_listing(f"would upload to model repo {args.repo_id}", export_dir)
                if args.space_repo_id:
                    _print_listing(f"would upload to Space {args.space_repo_id}", space_dir)
                return 0
            url = upload(export_dir, args.repo_id, private=args.private, token=args.token, endpoint=args.endpoint,
                         commit_message=args.commit_message)
            print(f"uploaded {args.repo_id}: {url}")
            if args.space_repo_id:
                url = upload(space_dir, args.space_repo_id, repo_type="space", private=args.private, token=args.token,
                             endpoint=args.endpoint, commit_message=args.commit_message, space_sdk="gradio",
                             space_variables=[{"key": SPACE_MODEL_VARIABLE, "value": args.repo_id}])
                print(f"uploaded Space {args.space_repo_id}: {url}")
        except (ValueError, OSError) as err:
            print(f"hub.publish: error: {err}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
