"""What the app adds to a generation: one column of the page (`SoundCTMApp.refine`) against the pipeline call alone.

The page turns each result into int16 audio and a mel spectrogram image; this measures that cost as a ratio to the
pipeline's own time, in one process, median of `--repeats` runs after a warm-up.

    python benchmarks/bench_app.py                          # the bundled demo model (or --model DIR_OR_HUB_ID)
    python benchmarks/bench_app.py --random-seconds 4 10 --threads 1   # small random models making 4 s and 10 s clips

`--random-seconds` builds, under a fixed seed, a small random student with the real sampling rate (44.1 kHz) and
the paper VAE's hop (1024 samples), so the clip is as long as a real model's while the network is cheap: it shows the
app's cost per clip length, which does not depend on the network.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, ROOT)
PROMPT = "a dog barks"


def timed_interleaved(fns, repeats):
    """Median seconds of each function, run in turn within every repeat so that a busy machine slows all alike."""
    for fn in fns:
        fn()  # warm-up
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, bucket in zip(fns, times):
            start = time.perf_counter()
            fn()
            bucket.append(time.perf_counter() - start)
    return [statistics.median(bucket) for bucket in times]


def random_student(seconds: float, folder: str) -> str:
    """A small random student making `seconds` of 44.1 kHz audio, saved to `folder`."""
    from tiny_models import tiny_text_encoder, tiny_transformer, tiny_vae

    from soundctm import CTMScheduler, SoundCTMPipeline

    text_encoder, tokenizer, width = tiny_text_encoder("projected")
    vae = tiny_vae(encoder_rates=[4, 4, 8, 8], decoder_rates=[8, 8, 4, 4])  # hop 1024, as the paper's VAE
    frames = round(seconds * 44100 / vae.hop_length)
    pipe = SoundCTMPipeline(vae, text_encoder, tokenizer, tiny_transformer(width, sample_size=frames), CTMScheduler())
    pipe.save_pretrained(folder)
    return folder


def measure(app_module, model: str, steps: int, repeats: int) -> dict:
    import torch

    app = app_module.SoundCTMApp(model)
    pipe = app.student.get()
    pipe.set_progress_bar_config(disable=True)
    length = float(pipe.max_audio_length_in_s)
    run_pipeline = lambda: pipe(PROMPT, num_inference_steps=steps, generator=torch.Generator().manual_seed(0))  # noqa: E731
    run_column = lambda: app.refine(PROMPT, "", 0, 5.0, 1.0, 0.0, length, steps)  # noqa: E731
    audio = run_pipeline().audios[0]
    run_spectrogram = lambda: app_module.spectrogram_image(audio, pipe.sampling_rate)  # noqa: E731
    t_pipeline, t_column, t_spectrogram = timed_interleaved([run_pipeline, run_column, run_spectrogram], repeats)
    return dict(model=model, seconds=length, steps=steps, pipeline=t_pipeline, column=t_column, spectrogram=t_spectrogram)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="student folder or Hub id (default: $SOUNDCTM_MODEL, else the bundled demo)")
    parser.add_argument("--random-seconds", type=float, nargs="*", default=None, help="clip lengths of small random models instead")
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    from app_testing import load_app_module

    app_module = load_app_module()
    with tempfile.TemporaryDirectory() as tmp:
        if args.random_seconds:
            models = [random_student(s, os.path.join(tmp, f"random_{s:g}s")) for s in args.random_seconds]
        else:
            models = [app_module.resolve_models(args.model)[0]]
        rows = [measure(app_module, m, steps, args.repeats) for m in models for steps in args.steps]
    print(f"torch threads: {torch.get_num_threads()}, median of {args.repeats} runs\n")
    print("| model | clip | steps | pipeline alone | one app column | column / pipeline | spectrogram image |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        name = "random (small)" if args.random_seconds else r["model"]
        print(f"| {name} | {r['seconds']:.2f} s | {r['steps']} | {r['pipeline']:.3f} s | {r['column']:.3f} s "
              f"| {r['column'] / r['pipeline']:.2f} | {r['spectrogram']:.3f} s |")


if __name__ == "__main__":
    main()
