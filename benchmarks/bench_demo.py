"""How fast the bundled demo model is where a user feels it: a 1-step draft from text to waveform, the teacher it was
distilled from, the app's compare (1, 2, 4, 8, 16 steps and the teacher, from click to the last column), and the
CLI's single call in a fresh process.

    python benchmarks/bench_demo.py                      # the bundled student and teacher, 2 torch threads
    python benchmarks/bench_demo.py --threads 1 --repeats 9

In one warm process, the pipeline calls and their parts run interleaved (every repeat runs each in turn, so a busy
machine slows all alike) and the median is reported, with ratios: each part of the 1-step call against the call, the
1-step call against the teacher column's call (the teacher folder's own Heun steps: 18 for the demo teacher, with
its Heun-40 call, the paper's baseline, beside it). The compare is timed as a user meets it: `python app.py` serves in a
process of its own and gradio_client sends the page's request; the columns arrive as they finish, so it is timed to
the first (the 1-step draft) and to the last (the teacher's), files included; the sum of the six pipeline calls' times
that the app prints under its columns is reported beside them, and the CPU time the client process spent, which a
browser on another machine would not take from the server. The CLI runs `soundctm generate` in a new process (model loading and imports included), best of two.
"""

import argparse
import contextlib
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import httpx
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from soundctm import SoundCTMPipeline  # noqa: E402

ASSETS = os.path.join(ROOT, "assets", "soundctm-demo")
PROMPT = "a high-pitched tone fading out"
STEPS = ["1", "2", "4", "8", "16", "teacher"]


def timed_interleaved(fns: dict, repeats: int) -> dict:
    """Median seconds of each function, run in turn within every repeat (after one warm-up run each)."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


@torch.no_grad()
def pipeline_times(student, teacher, repeats: int) -> dict:
    device = torch.device("cpu")
    noise = torch.randn(1, student.transformer.config.in_channels, student.transformer.config.sample_size,
                        generator=torch.Generator().manual_seed(0))  # fmt: skip
    embeds = student.encode_text([PROMPT], device)
    sigma = student.scheduler.config.sigma_max
    student.scheduler.set_timesteps(1)
    tokens = student.scheduler.scale_model_input(noise * sigma, torch.tensor(sigma))
    full = student.transformer.config.sample_size * student.vae.hop_length

    def one_step():
        student(PROMPT, num_inference_steps=1, generator=torch.Generator().manual_seed(0))

    def text():
        student.encode_text([PROMPT], device)

    def network():
        student.transformer(tokens, timestep=torch.tensor([0.0]), target_timestep=torch.tensor([-1.0]),
                            guidance_scale=torch.tensor([student.default_guidance_scale]), encoder_hidden_states=embeds)  # fmt: skip

    def decode():
        student.decode_latents(noise, full)

    def heun():  # the teacher column: the teacher folder's own step count (18 for the demo teacher)
        teacher(PROMPT, generator=torch.Generator().manual_seed(0))

    def heun40():  # the paper's baseline
        teacher(PROMPT, num_inference_steps=40, generator=torch.Generator().manual_seed(0))

    calls = {"1-step generation": one_step, "text encoder": text, "student network": network, "decode (Griffin-Lim)": decode,
             teacher_row(teacher): heun}  # fmt: skip
    if teacher.default_num_inference_steps != 40:
        calls["teacher, Heun 40 (the paper's baseline)"] = heun40
    return timed_interleaved(calls, repeats)


def teacher_row(teacher) -> str:
    return f"teacher, Heun {teacher.default_num_inference_steps} (the app's teacher column)"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def served_app(student_dir: str, threads: int, timeout: float = 180.0):
    """`python app.py --model student_dir` in a process of its own, as a user starts it; yields its URL."""
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "GRADIO_ANALYTICS_ENABLED": "False"}
    server = subprocess.Popen([sys.executable, os.path.join(ROOT, "app.py"), "--model", student_dir, "--host", "127.0.0.1",
                               "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"app.py exited with code {server.returncode} before serving")
            try:
                if httpx.get(url, timeout=2.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"app.py did not serve {url} within {timeout:.0f} s")
            time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        server.wait(30)


def compare_times(student_dir: str, student, repeats: int, threads: int) -> dict:
    """
    The app's compare from click to the first and to the last column: `gradio_client` sends the page's request to
    `python app.py` serving in another process (the request, the queue, the generations, the WAV and PNG files of each
    column as it finishes, the reply). Also the sum of the six pipeline calls' wall times that the app prints under
    each column. Medians of `repeats` after one warm-up.
    """
    from gradio_client import Client

    length, omega = student.max_audio_length_in_s, student.default_guidance_scale  # the app's defaults
    first, last, pipelines, client_cpu = [], [], [], []
    with served_app(student_dir, threads) as url:
        client = Client(url, verbose=False)
        for _ in range(repeats + 1):
            start, cpu = time.perf_counter(), time.process_time()
            job = client.submit(PROMPT, "", 0, omega, 1.0, 0.0, length, STEPS, api_name="/compare_stream")
            outputs = None
            for k, update in enumerate(job):  # each update's files downloaded; it leaves what it skips as it is
                if k == 0:  # the 1-step column
                    first.append(time.perf_counter() - start)
                outputs = update if outputs is None else [o if isinstance(n, dict) else n for o, n in zip(outputs, update)]
            last.append(time.perf_counter() - start)
            client_cpu.append(time.process_time() - cpu)
            labels = outputs[2:3 * len(STEPS):3]  # per column: audio, spectrogram, "<column>: <seconds> s"
            times = [float(m) for label in labels for m in re.findall(r": ([0-9.]+) s$", label)]
            if len(times) != len(STEPS):
                raise RuntimeError(f"expected {len(STEPS)} column times in the reply, found {times}")
            pipelines.append(sum(times))
    return {
        "compare, click to the 1-step column (HTTP)": statistics.median(first[1:]),
        "compare, click to the last column (HTTP)": statistics.median(last[1:]),
        "compare, its six pipeline calls (the app's time labels)": statistics.median(pipelines[1:]),
        "compare, CPU time of the client itself (shares this machine's cores with the server)": statistics.median(client_cpu[1:]),
    }


def cli_seconds(threads: int) -> float:
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        for _ in range(2):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "soundctm.cli", "generate", PROMPT, "--seed", "0", "-q",
                            "-o", os.path.join(tmp, "draft.wav")], check=True, env=env)  # fmt: skip
            times.append(time.perf_counter() - start)
    return min(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--student", default=os.path.join(ASSETS, "student"))
    parser.add_argument("--teacher", default=os.path.join(ASSETS, "teacher"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-app", action="store_true", help="skip the app's compare")
    parser.add_argument("--no-cli", action="store_true", help="skip the CLI's fresh-process call")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    student = SoundCTMPipeline.from_pretrained(args.student)
    teacher = SoundCTMPipeline.from_pretrained(args.teacher)
    for pipe in (student, teacher):
        pipe.set_progress_bar_config(disable=True)
    times = pipeline_times(student, teacher, args.repeats)
    if not args.no_app:
        times.update(compare_times(args.student, student, args.repeats, args.threads))
    if not args.no_cli:
        times["CLI, one call in a fresh process"] = cli_seconds(args.threads)

    one, heun = times["1-step generation"], times[teacher_row(teacher)]
    print(f"torch threads: {args.threads}; median of {args.repeats} interleaved runs (the CLI: best of 2)\n")
    print("| | seconds | ratio |")
    print("|---|---|---|")
    for name, seconds in times.items():
        if name in ("text encoder", "student network", "decode (Griffin-Lim)"):
            ratio = f"{seconds / one:.2f} of the 1-step generation"
        elif name == "1-step generation":
            ratio = f"{one / heun:.3f} of the teacher's"
        elif name.startswith("compare, click to the 1-step"):
            ratio = f"{seconds / one:.1f}× the 1-step generation alone"
        elif name.startswith("compare, CPU"):
            ratio = "–"
        elif name.startswith("compare"):
            ratio = f"{seconds / heun:.2f}× the teacher column's call alone"
        else:
            ratio = "–"
        print(f"| {name} | {seconds:.3f} | {ratio} |")


if __name__ == "__main__":
    main()
