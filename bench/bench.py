#!/usr/bin/env python3
"""Time llc against PyTorch and OpenBLAS on Tracr models; bench/run starts it.

Usage: python3 bench/bench.py [--seconds S] [--quick]

Needs ./llc, bench/build/matmul_bench and a Python with torch (this one).
Compiles the models it needs into bench/build/, then measures, in one run:

1. SGLD steps per second of `llc estimate` and of bench/sgld_torch.py on the
   same model, batch (32), loss, inputs (1024 random, full length), chains
   and threads. There are two settings: 1 chain on 1 thread, and 2 chains
   on 2 threads, which llc runs in parallel and PyTorch one after another
   with 2 intra-op threads. llc's time is the `seconds` of its JSON: every
   chain's steps plus the few forward passes of init_loss. PyTorch's time
   starts after five warm-up steps per chain.
2. llc with 4 chains on 1 and on 2 threads, and the speed-up.
3. bench/build/matmul_bench: llc's matmul against OpenBLAS on one core.

Prints the tables and writes them, with the machine and the commands, to
bench/build/results.md.
"""

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.path.join(ROOT, "bench", "build")
LLC = os.path.join(ROOT, "llc")
TORCH_SCRIPT = os.path.join(ROOT, "bench", "sgld_torch.py")
PROGRAMS = ("sort", "hist", "length", "frac_prevs")
LENGTHS = (5, 10, 20, 50)


def run(command):
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"bench: {' '.join(command)} failed with status {result.returncode}:\n{result.stderr}")
    return result.stdout


def model_path(program, n):
    path = os.path.join(BUILD, f"{program}_n{n}.llcw")
    if not os.path.exists(path):
        run([sys.executable, os.path.join(ROOT, "tracr_weights", "compile.py"), program,
             "--max-seq-len", str(n), "-o", path])
    return path


def torch_loss(path):
    """Returns the llc --loss that bench/sgld_torch.py computes for this model: ce, or mse if numerical."""
    info = json.loads(run([LLC, "info", path, "--json"]))
    return "mse" if info["output"] == "numerical" else "ce"


def llc_estimate(path, chains, threads, draws):
    """Returns (steps per second, JSON) of one `llc estimate` run."""
    out = os.path.join(BUILD, "estimate.json")
    run([LLC, "estimate", path, "--chains", str(chains), "--threads", str(threads), "--draws", str(draws),
         "--loss", torch_loss(path), "--quiet", "--json", out])
    with open(out) as f:
        data = json.load(f)
    return chains * draws / data["seconds"], data


def llc_steps_per_second(path, chains, threads, seconds):
    """Calibrates the number of draws on a short run, then times about `seconds`."""
    rate, _ = llc_estimate(path, chains, threads, 3)
    draws = max(10, int(rate * seconds / chains))
    return llc_estimate(path, chains, threads, draws)[0]


def torch_steps_per_second(path, chains, threads, seconds):
    out = run([sys.executable, TORCH_SCRIPT, path, "--chains", str(chains), "--threads", str(threads),
               "--seconds", str(seconds)])
    return json.loads(out)["steps_per_second"]


def outputs_agree(path, program):
    """Largest |llc - PyTorch| of the output-space values on one input."""
    tokens = {"sort": ["3", "1", "2"], "hist": ["a", "b", "a"], "length": ["a", "c", "d"],
              "frac_prevs": ["a", "x", "x"]}[program]
    ours = [[float(v) for v in line.split()] for line in run([LLC, "run", path, "--raw"] + tokens).split("\n")
            if line.strip()]
    theirs = json.loads(run([sys.executable, TORCH_SCRIPT, path, "--outputs"] + tokens))
    return max(abs(a - b) for row_a, row_b in zip(ours, theirs) for a, b in zip(row_a, row_b))


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="time per measurement (default 2)")
    parser.add_argument("--quick", action="store_true", help="max_seq_len 5 and 10 only, for a smoke test")
    args = parser.parse_args()
    os.makedirs(BUILD, exist_ok=True)
    lengths = LENGTHS[:2] if args.quick else LENGTHS
    import torch  # here, so that --help works without it

    lines = []

    def emit(text=""):
        print(text, flush=True)
        lines.append(text)

    emit(f"date: {datetime.date.today().isoformat()}")
    emit(f"cpu: {cpu_name()}, {os.cpu_count()} cores ({platform.machine()})")
    emit(f"llc: {run([LLC, '--version']).strip()}; PyTorch {torch.__version__}")
    for var in ("OPENBLAS_CORETYPE", "OMP_NUM_THREADS"):
        if os.environ.get(var):
            emit(f"environment: {var}={os.environ[var]}")
    # other processes share the cores, and the 2-thread numbers depend on them
    emit("load average at the start: %.2f %.2f %.2f" % os.getloadavg())
    emit()

    emit("SGLD steps per second (batch 32, cross-entropy or for numerical outputs mse, lr 1e-5); "
         "ratio = llc / PyTorch")
    emit()
    emit("| model | params | max abs output diff | 1 thread llc | PyTorch | ratio | 2 threads llc | PyTorch | ratio |")
    emit("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n in lengths:
        for program in PROGRAMS:
            path = model_path(program, n)
            info = json.loads(run([LLC, "info", path, "--json"]))
            cells = [f"{program} n={n}", str(info["n_params"]), f"{outputs_agree(path, program):.1e}"]
            for threads in (1, 2):
                ours = llc_steps_per_second(path, threads, threads, args.seconds)
                theirs = torch_steps_per_second(path, threads, threads, args.seconds)
                cells += [f"{ours:.1f}", f"{theirs:.1f}", f"{ours / theirs:.2f}"]
            emit("| " + " | ".join(cells) + " |")
    emit()

    emit("llc with 4 chains: steps per second on 1 and 2 threads")
    emit()
    emit("| model | 1 thread | 2 threads | speed-up |")
    emit("|---|---:|---:|---:|")
    for n in lengths[1:]:
        for program in ("sort", "hist"):
            path = model_path(program, n)
            rate, _ = llc_estimate(path, 4, 1, 3)
            draws = max(10, int(rate * 1.5 * args.seconds / 4))
            one, _ = llc_estimate(path, 4, 1, draws)
            two, _ = llc_estimate(path, 4, 2, draws)
            emit(f"| {program} n={n} | {one:.1f} | {two:.1f} | {two / one:.2f} |")
    emit()

    emit("matmul GFLOP/s on one core, llc against OpenBLAS (M x K times K x N, batch of 32 inputs)")
    emit()
    matmul_models = [model_path(p, n) for p, n in (("sort", 20), ("hist", 50), ("sort", 50)) if n in lengths]
    if not matmul_models:
        matmul_models = [model_path("sort", lengths[-1])]
    out = run([os.path.join(BUILD, "matmul_bench")] + matmul_models)
    emit("```")
    for line in out.rstrip("\n").split("\n"):
        emit(line)
    emit("```")

    emit()
    emit("load average at the end: %.2f %.2f %.2f" % os.getloadavg())
    with open(os.path.join(BUILD, "results.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"\nwritten to {os.path.relpath(os.path.join(BUILD, 'results.md'), ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
