"""Control and editing on a SoundCTM student: small-scale analogues of the paper's Table 5 (sound intensity control)
and Table 14 (zero-shot bandwidth extension), and audio-to-audio against strength.

    python benchmarks/bench_control.py                                   # the bundled demo student
    python benchmarks/bench_control.py --model DIR --prompts 4 --json out.json
    python benchmarks/bench_control.py --tiny                            # a tiny random student: proves it runs

Prompts and recordings are the held-out test split of the procedural sounds (recipes/procedural: captions from the
templates training never saw, clips drawn from `make_data.clip_record("test", class, 0, seed)`), and prompt adherence
is that recipe's analytic evaluator (`evaluate.score`: does the clip have the source and every attribute the prompt
names). Seeds are fixed: prompt i uses seed `--seed + i` for every method, so the methods start from the same noise.

Table 5 analogue, each row over prompts × target curves (`--curves`, the presets of soundctm.intensity):
  default generation, DITTO-2 (70 Adam iterations on z_T through 1-step generations, lr 1.0, then N steps; γ = 0 and
  0.2) and loss-based guidance (Algorithm 3, γ = 0, one row per ρ); columns: dB-curve MSE (the loss, in dB²),
  adherence accuracy, seconds per clip and its ratio to default generation (same process).
Table 14 analogue: recordings low-passed at `--cutoff` Hz and extended with 4 and 8 jumps; log-spectral distance
  (log10 power, 2048/512 STFT) of the low-passed input, of the extension, and of the VAE's own reconstruction (the floor
  a latent model can reach) against the original.
Audio-to-audio: a recording of one class refined toward the held-out caption of another class at each `--strengths`;
  adherence to the new prompt, adherence to the recording's own caption, and the evaluator's content distance
  (mean |Δ| of log-mel spectrograms, dB) to the recording.
With `--tiny` (a random 2-layer student, 5120-sample clips) the numbers mean nothing and adherence is not scored: it
only shows that every path runs.
"""

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

from soundctm import SoundCTMPipeline  # noqa: E402
from soundctm.intensity import INTENSITY_PRESETS, intensity_loss  # noqa: E402
from soundctm.pipeline_soundctm_audio2audio import SoundCTMAudioToAudioPipeline  # noqa: E402
from soundctm.pipeline_soundctm_bwe import SoundCTMBandwidthExtensionPipeline  # noqa: E402
from soundctm.pipeline_soundctm_guidance import DITTO2_ITERATIONS, SoundCTMGuidancePipeline  # noqa: E402
from soundctm.signal_ops import log_spectral_distance, lowpass  # noqa: E402


# ------------------------------------------------------------------------------------------------ data and evaluator
def load_recipe():
    """(make_data, evaluate) modules of the recipes.procedural package (the repository root is on sys.path)."""
    from recipes.procedural import evaluate, make_data

    return make_data, evaluate


def held_out(make_data, count: int, data_seed: int, offset: int = 0) -> list[tuple[str, np.ndarray]]:
    """(caption, clip) of `count` test-split classes spread over all classes, starting `offset` classes further."""
    num_classes = len(make_data.all_classes())
    picks = [(offset + round(i * num_classes / count)) % num_classes for i in range(count)]
    return [(record["caption"], audio) for record, audio in (make_data.clip_record("test", c, 0, data_seed) for c in picks)]


def fit(audio: np.ndarray, length: int) -> np.ndarray:
    """A clip zero-padded to the model's length, or cut to its loudest stretch of that length."""
    if len(audio) <= length:
        return np.pad(audio, (0, length - len(audio))).astype(np.float32)
    energy = np.concatenate([[0.0], np.cumsum(audio.astype(np.float64) ** 2)])
    start = int(np.argmax(energy[length:] - energy[:-length]))
    return audio[start : start + length].astype(np.float32)


class Adherence:
    """The evaluator's verdict per clip, or None where it cannot judge (tiny clips, prompts it cannot parse)."""

    def __init__(self, evaluate):
        self.evaluate = evaluate

    def score(self, audio, prompt):
        if self.evaluate is None:
            return None
        try:
            return bool(self.evaluate.score(np.asarray(audio, dtype=np.float64).reshape(-1), prompt)[0])
        except ValueError:
            return None

    def distance(self, a, b):
        if self.evaluate is None:
            return None
        return float(self.evaluate.content_distance(np.asarray(a).reshape(-1), np.asarray(b).reshape(-1)))


def mean_or_none(values):
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


# ------------------------------------------------------------------------------------------------ the three studies
def intensity_table(pipe, prompts, curves, args, adherence):
    """Table 5 analogue: rows of {method, gamma, mse, adherence, seconds}."""
    guided = SoundCTMGuidancePipeline.from_pipe(pipe)
    guided.set_progress_bar_config(disable=True)
    num_samples = pipe.transformer.config.sample_size * pipe.vae.hop_length
    methods = [("default generation", 0.0, dict(rho=0.0))]
    methods += [("DITTO-2", g, dict(rho=0.0, noise_optimization_steps=args.ditto_iterations)) for g in (0.0, 0.2)]
    methods += [(f"loss-based guidance ρ={rho:g}", 0.0, dict(rho=rho)) for rho in args.rho]
    rows = []
    for name, gamma, control in methods:
        mse, hits, seconds = [], [], []
        for i, prompt in enumerate(prompts):
            for curve in curves:
                loss = intensity_loss(curve, num_samples, pipe.sampling_rate, tuple(args.intensity_range))
                start = time.perf_counter()
                audio = guided(prompt, num_inference_steps=args.steps, guidance_scale=args.omega, nu=args.nu, gamma=gamma,
                               generator=torch.Generator().manual_seed(args.seed + i), loss_fn=loss, **control).audios
                seconds.append(time.perf_counter() - start)
                mse.append(loss(torch.from_numpy(audio)).item())
                hits.append(adherence.score(audio, prompt))
        rows.append(dict(method=name, gamma=gamma, mse_db2=float(np.mean(mse)), adherence=mean_or_none(hits),
                         seconds_per_clip=float(np.mean(seconds)), per_curve_mse={c: float(np.mean(mse[j::len(curves)]))
                                                                                  for j, c in enumerate(curves)}))
        print(f"  {name:32s} γ={gamma:<4g} MSE {rows[-1]['mse_db2']:8.1f} dB²", flush=True)
    base = rows[0]["seconds_per_clip"]
    for row in rows:
        row["time_vs_default"] = row["seconds_per_clip"] / base
    return rows


def bandwidth_table(pipe, clips, args):
    """Table 14 analogue: LSD against the original of the low-passed input, the VAE reconstruction, the extensions."""
    bwe = SoundCTMBandwidthExtensionPipeline.from_pipe(pipe)
    bwe.set_progress_bar_config(disable=True)
    rate = pipe.sampling_rate
    originals = torch.stack([torch.from_numpy(clip) for _, clip in clips])[:, None]
    observed = lowpass(originals, args.cutoff, rate)
    with torch.no_grad():
        posterior = pipe.vae.encode(originals).latent_dist
        reconstruction = pipe.vae.decode(posterior.mode()).sample[..., : originals.shape[-1]].clamp(-1, 1)
    rows = [dict(method="low-passed (observed signal)", steps=None, lsd=log_spectral_distance(observed, originals).mean().item()),
            dict(method="VAE reconstruction (floor)", steps=None, lsd=log_spectral_distance(reconstruction, originals).mean().item())]  # fmt: skip
    for steps in (4, 8):
        extended = []
        start = time.perf_counter()
        for i, (caption, clip) in enumerate(clips):
            extended.append(bwe(clip, prompt=caption if args.bwe_caption else None, cutoff_hz=args.cutoff,
                                num_inference_steps=steps, guidance_scale=args.omega, nu=args.nu,
                                generator=torch.Generator().manual_seed(args.seed + i), output_type="pt").audios)  # fmt: skip
        seconds = (time.perf_counter() - start) / len(clips)
        extended = torch.cat(extended)
        kept = (lowpass(extended, args.cutoff, rate) - observed).abs().max().item()
        rows.append(dict(method="bandwidth extension", steps=steps, lsd=log_spectral_distance(extended, originals).mean().item(),
                         max_low_band_change=kept, seconds_per_clip=seconds))  # fmt: skip
    for row in rows:
        print(f"  {row['method']:30s} {row['steps'] or '-':>2} LSD {row['lsd']:.3f}", flush=True)
    return rows


def audio2audio_table(pipe, sources, targets, args, adherence):
    """Adherence to the new prompt, to the source's caption, and content distance to the source, per strength."""
    a2a = SoundCTMAudioToAudioPipeline.from_pipe(pipe)
    a2a.set_progress_bar_config(disable=True)
    rows = []
    for strength in args.strengths:
        new, old, distance = [], [], []
        for i, ((source_caption, clip), (prompt, _)) in enumerate(zip(sources, targets)):
            out = a2a(prompt, audio=clip, strength=strength, num_inference_steps=args.a2a_steps, guidance_scale=args.omega,
                      nu=args.nu, generator=torch.Generator().manual_seed(args.seed + i)).audios[0]  # fmt: skip
            new.append(adherence.score(out, prompt))
            old.append(adherence.score(out, source_caption))
            distance.append(adherence.distance(out, clip))
        rows.append(dict(strength=strength, adherence_new_prompt=mean_or_none(new), adherence_source_caption=mean_or_none(old),
                         content_distance_db=mean_or_none(distance)))  # fmt: skip
        print(f"  strength {strength:<4g} new {rows[-1]['adherence_new_prompt']}, source {rows[-1]['adherence_source_caption']}, "
              f"distance {rows[-1]['content_distance_db']}", flush=True)  # fmt: skip
    return rows


# ------------------------------------------------------------------------------------------------ report
def fmt(value, spec=".2f"):
    return "n/a" if value is None else format(value, spec)


def markdown(results) -> str:
    lines = [f"Model: {results['model']} — {results['settings']}", "",
             "| Method | γ | dB-curve MSE ↓ | Adherence ↑ | s / clip | × default |", "|---|---|---|---|---|---|"]  # fmt: skip
    for r in results["intensity"]:
        lines.append(f"| {r['method']} | {r['gamma']:g} | {r['mse_db2']:.1f} | {fmt(r['adherence'])} | "
                     f"{r['seconds_per_clip']:.2f} | {r['time_vs_default']:.1f} |")  # fmt: skip
    lines += ["", "| Method | Steps | LSD ↓ |", "|---|---|---|"]
    for r in results["bandwidth"]:
        lines.append(f"| {r['method']} | {r['steps'] or '-'} | {r['lsd']:.3f} |")
    lines += ["", "| Strength | Adherence to the new prompt ↑ | Adherence to the source caption | Content distance to the source (dB) |",
              "|---|---|---|---|"]  # fmt: skip
    for r in results["audio2audio"]:
        lines.append(f"| {r['strength']:g} | {fmt(r['adherence_new_prompt'])} | {fmt(r['adherence_source_caption'])} | "
                     f"{fmt(r['content_distance_db'])} |")  # fmt: skip
    return "\n".join(lines)


def tiny_student():
    from tiny_models import tiny_text_encoder, tiny_transformer, tiny_vae

    from soundctm import CTMScheduler

    text_encoder, tokenizer, width = tiny_text_encoder("projected")
    return SoundCTMPipeline(vae=tiny_vae(), text_encoder=text_encoder, tokenizer=tokenizer,
                            transformer=tiny_transformer(width, sample_size=640), scheduler=CTMScheduler())  # fmt: skip


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="student folder or Hub id (default: the bundled demo student)")
    parser.add_argument("--tiny", action="store_true", help="a tiny random student instead (checks that everything runs)")
    parser.add_argument("--prompts", type=int, default=3, help="held-out prompts / recordings per study (default 3)")
    parser.add_argument("--curves", default=",".join(p for p in INTENSITY_PRESETS if p != "steps"),
                        help="target curves (default: six presets, as the paper's six)")
    parser.add_argument("--intensity-range", type=float, nargs=2, default=[-40.0, -15.0], metavar=("LOW", "HIGH"))
    parser.add_argument("--steps", type=int, default=16, help="sampling steps for Table 5 (the paper: 16)")
    parser.add_argument("--rho", type=lambda s: [float(v) for v in s.split(",")], default=[0.1], help="ρ values, comma-separated")
    parser.add_argument("--ditto-iterations", type=int, default=DITTO2_ITERATIONS)
    parser.add_argument("--omega", type=float, default=None, help="ω (default: the model's own)")
    parser.add_argument("--nu", type=float, default=2.0, help="ν for every method (the paper's DITTO-2 runs use 2)")
    parser.add_argument("--cutoff", type=float, default=3000.0)
    parser.add_argument("--bwe-caption", action="store_true", help="give bandwidth extension the clip's caption (default: \"\")")
    parser.add_argument("--strengths", type=lambda s: [float(v) for v in s.split(",")], default=[0.1, 0.3, 0.5, 0.7, 0.9, 1.0])
    parser.add_argument("--a2a-steps", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-seed", type=int, default=1234, help="seed of the held-out clips (make_data.clip_record)")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    if args.tiny:
        pipe, model = tiny_student(), "tiny random student (tests/tiny_models.py, 5120-sample clips)"
    else:
        from soundctm.cli import resolve_model

        model = resolve_model(args.model)
        pipe = SoundCTMPipeline.from_pretrained(model)
    pipe.set_progress_bar_config(disable=True)
    if args.omega is None:
        args.omega = pipe.default_guidance_scale
    if not pipe.is_student:
        raise SystemExit(f"{model} is a teacher; this benchmark needs a SoundCTM student")
    make_data, evaluate = load_recipe()
    adherence = Adherence(None if args.tiny else evaluate)
    length = pipe.transformer.config.sample_size * pipe.vae.hop_length
    if pipe.sampling_rate != make_data.SAMPLING_RATE:
        raise SystemExit(f"the procedural clips are {make_data.SAMPLING_RATE} Hz, the model {pipe.sampling_rate} Hz")
    sources = [(c, fit(a, length)) for c, a in held_out(make_data, args.prompts, args.data_seed)]
    targets = [(c, fit(a, length)) for c, a in held_out(make_data, args.prompts, args.data_seed, offset=7)]
    curves = [c.strip() for c in args.curves.split(",") if c.strip()]

    settings = (f"{args.prompts} held-out prompts × {len(curves)} curves, {args.steps} steps, ω {args.omega:g}, ν {args.nu:g}, "
                f"range {args.intensity_range[0]:g}..{args.intensity_range[1]:g} dB, cut-off {args.cutoff:g} Hz, seed {args.seed}")  # fmt: skip
    print(f"{model}: {settings}", flush=True)
    results = dict(model=model, settings=settings, torch_threads=torch.get_num_threads())
    print("Intensity control (Table 5 analogue)", flush=True)
    results["intensity"] = intensity_table(pipe, [c for c, _ in sources], curves, args, adherence)
    print("Bandwidth extension (Table 14 analogue)", flush=True)
    results["bandwidth"] = bandwidth_table(pipe, sources, args)
    print("Audio-to-audio", flush=True)
    results["audio2audio"] = audio2audio_table(pipe, sources, targets, args, adherence)
    print()
    print(markdown(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
