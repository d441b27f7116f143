#!/usr/bin/env python3
"""Tests of llc sweep, llc collect, llc plot and the float64 build.

Usage: python3 tests/test_sweep.py
Prints one line per test: "ok NAME", "FAIL NAME: why" or "skip NAME: why".
Compares sizes with ../shared/tracr_reference/sparsity.csv when present.
"""

import csv
import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET

from harness import LLC, LLC64, REFERENCE, SVG, WEIGHTS, expect, llc, run_tests

SPARSITY = os.path.join(REFERENCE, "sparsity.csv")
TMP = tempfile.mkdtemp(prefix="llc-sweep-")
SMALL = ["--programs", "hist,sort", "--lengths", "4:6", "--lr", "1e-5", "--draws", "8", "--chains", "2",
         "--samples", "64", "--quiet"]


def read_rows(folder):
    with open(os.path.join(folder, "results.csv")) as f:
        return list(csv.DictReader(f))


def comparable(rows):
    """The rows without the run time, which differs from run to run."""
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def direct_sweep():
    folder = os.path.join(TMP, "direct")
    if not os.path.exists(os.path.join(folder, "results.csv")):
        result = llc("sweep", *SMALL, "--out", folder)
        expect(result.returncode == 0, f"sweep exited {result.returncode}: {result.stderr.strip()[-400:]}")
    return folder


def test_sweep_rows_and_sizes():
    rows = read_rows(direct_sweep())
    keys = [(r["program"], r["max_seq_len"], r["lr"]) for r in rows]
    expect(len(rows) == 6 and len(set(keys)) == 6, f"{len(rows)} rows: {keys}")
    expect(all(r["status"] == "ok" and r["llc_mean"] for r in rows), "a job has no estimate")
    if os.path.exists(SPARSITY):
        with open(SPARSITY) as f:
            table = {(r["program"], r["max_seq_len"]): r for r in csv.DictReader(f)}
        for r in rows:
            ref = table[(r["program"], r["max_seq_len"])]
            expect(r["n_params"] == ref["total_params"], f"{r['program']} {r['max_seq_len']}: n_params "
                                                         f"{r['n_params']}, table {ref['total_params']}")
            expect(r["n_nonzero"] == ref["nonzero_params"], f"{r['program']} {r['max_seq_len']}: n_nonzero "
                                                            f"{r['n_nonzero']}, table {ref['nonzero_params']}")
            expect(abs(float(r["sparsity"]) - int(ref["nonzero_params"]) / int(ref["total_params"])) < 1e-8,
                   "sparsity differs")


def test_sweep_resumes_after_kill():
    folder = os.path.join(TMP, "killed")
    proc = subprocess.Popen([LLC, "sweep", *SMALL, "--draws", "400", "--out", folder],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    jobs = os.path.join(folder, "jobs")
    deadline = time.time() + 60
    while time.time() < deadline:
        done = [n for n in os.listdir(jobs) if n.endswith(".json")] if os.path.isdir(jobs) else []
        if len(done) >= 2:
            break
        time.sleep(0.05)
    proc.kill()   # SIGKILL: no chance to clean up
    proc.wait()
    before = read_rows(folder)
    expect(1 <= len(before) < 6, f"{len(before)} rows when killed; expected a sweep half done")
    result = llc("sweep", *SMALL, "--draws", "400", "--out", folder)
    expect(result.returncode == 0, result.stderr[-300:])
    after = read_rows(folder)
    keys = [(r["program"], r["max_seq_len"], r["lr"]) for r in after]
    expect(len(after) == 6 and len(set(keys)) == 6, f"after the rerun: {keys}")
    expect("done before" in result.stdout and " 0 done before" not in result.stdout, result.stdout)
    for row in before:   # finished rows are kept as they were
        match = [r for r in after if (r["program"], r["max_seq_len"], r["lr"]) ==
                 (row["program"], row["max_seq_len"], row["lr"])]
        expect(match and match[0] == row, f"row {row['program']} {row['max_seq_len']} changed")


def test_sweep_refuses_other_settings():
    folder = direct_sweep()
    before = open(os.path.join(folder, "results.csv")).read()
    changed = [a if a != "8" else "9" for a in SMALL]   # --draws 9 instead of 8
    result = llc("sweep", *changed, "--out", folder)
    expect(result.returncode == 1 and "other settings" in result.stderr and "draws" in result.stderr,
           f"exit {result.returncode}: {result.stderr.strip()[-300:]}")
    expect(open(os.path.join(folder, "results.csv")).read() == before, "results.csv changed")


def test_emit_jobs_matches_direct():
    folder = os.path.join(TMP, "emitted")
    emitted = llc("sweep", *SMALL, "--out", folder, "--emit-jobs")
    expect(emitted.returncode == 0, emitted.stderr[-300:])
    lines = emitted.stdout.strip().split("\n")
    expect(len(lines) == 6 and all(" estimate " in line and "--json" in line for line in lines), emitted.stdout)
    run = subprocess.run("xargs -d '\\n' -P 2 -I CMD sh -c CMD", shell=True, input=emitted.stdout,
                         capture_output=True, text=True)
    expect(run.returncode == 0, run.stderr[-300:])
    collected = llc("collect", folder)
    expect(collected.returncode == 0, collected.stderr)
    expect(comparable(read_rows(folder)) == comparable(read_rows(direct_sweep())),
           "the rows of the emitted jobs differ from the direct sweep")


def test_oversize_job_skipped_up_front():
    folder = os.path.join(TMP, "oversize")
    result = llc("sweep", "--programs", "sort_freq", "--lengths", "5,100", "--lr", "1e-5", "--draws", "4",
                 "--chains", "2", "--samples", "64", "--max-memory", "16G", "--quiet", "--out", folder)
    expect(result.returncode == 0, result.stderr[-300:])
    rows = {r["max_seq_len"]: r for r in read_rows(folder)}
    expect(rows["5"]["status"] == "ok" and rows["5"]["llc_mean"], f"N=5 row: {rows.get('5')}")
    status = rows["100"]["status"]
    expect(status.startswith("skipped: needs about") and "GB of memory" in status, status)
    expect(rows["100"]["n_params"] == "3188201042", f"n_params {rows['100']['n_params']}")
    expect(not os.path.exists(os.path.join(folder, "models", "sort_freq_n100.llcw")), "the model was compiled")


def test_skipped_job_retried_with_more_memory():
    folder = os.path.join(TMP, "retry")
    args = ["sweep", "--programs", "hist", "--lengths", "5", "--draws", "4", "--chains", "2", "--samples", "64",
            "--quiet", "--out", folder]
    first = llc(*args, "--max-memory", "1M")
    expect(first.returncode == 0, first.stderr[-300:])
    expect(read_rows(folder)[0]["status"].startswith("skipped"), "the job was not skipped at 1M")
    second = llc(*args, "--max-memory", "8G")
    expect(second.returncode == 0, second.stderr[-300:])
    rows = read_rows(folder)
    expect(len(rows) == 1 and rows[0]["status"] == "ok", f"rows after raising the limit: {rows}")


def test_close_step_sizes_get_own_rows():
    folder = os.path.join(TMP, "close_lrs")
    result = llc("sweep", "--programs", "hist", "--lengths", "5", "--lr", "1e-5,1.0000001e-5", "--draws", "4",
                 "--chains", "2", "--samples", "64", "--quiet", "--out", folder)
    expect(result.returncode == 0, result.stderr[-300:])
    lrs = sorted(r["lr"] for r in read_rows(folder))
    expect(len(lrs) == 2 and lrs[0] != lrs[1], f"rows for lr: {lrs}")


def test_collect_skips_junk():
    folder = direct_sweep()
    junk = os.path.join(folder, "jobs", "junk.json")
    with open(junk, "w") as f:
        f.write("[1, 2]")
    result = llc("collect", folder)
    os.remove(junk)
    expect(result.returncode == 1 and "junk.json" in result.stderr, result.stderr)
    expect(len(read_rows(folder)) == 6, "the junk file became a row")
    llc("collect", folder)


def test_lr_scale_linear():
    out = os.path.join(TMP, "scaled.json")
    result = llc("estimate", os.path.join(WEIGHTS, "sort_n5.llcw"), "--lr", "1e-3", "--lr-scale", "linear",
                 "--draws", 4, "--chains", 2, "--quiet", "--json", out)
    expect(result.returncode == 0, result.stderr)
    settings = json.load(open(out))["settings"]
    expect(abs(settings["lr"] - 1e-3 / (24968 / 1e4)) < 1e-12, f"lr {settings['lr']}")
    expect(settings["base_lr"] == 1e-3 and settings["lr_scale"] == "linear", str(settings))


def test_plot_svgs():
    folder = direct_sweep()
    result = llc("plot", folder, "--clip", "1e6")
    expect(result.returncode == 0, result.stderr)
    path = os.path.join(folder, "llc_lr1e-05.svg")
    texts = [t.text for t in ET.parse(path).getroot().iter(SVG + "text")]
    for label in ("max_seq_len", "llc_mean", "sparsity (n_nonzero / n_params)", "hist", "sort"):
        expect(label in texts, f"plot lacks {label!r}")
    for tick in ("4", "5", "6"):
        expect(tick in texts, f"plot lacks the max_seq_len tick {tick}")
    expect("4.5" not in texts and "5.5" not in texts, "the max_seq_len axis has ticks between whole lengths")
    result = llc("plot", folder, "--clip", "1e-9")
    texts = [t.text or "" for t in ET.parse(path).getroot().iter(SVG + "text")]
    expect(any("left out" in t and "hist" in t for t in texts), "clipped programs are not named")
    expect("leaves out" in result.stderr and "--clip" in result.stderr, f"no warning: {result.stderr[-300:]}")


def test_float32_warns_at_tiny_lr():
    result = llc("estimate", os.path.join(WEIGHTS, "sort_n5.llcw"), "--lr", "1e-20", "--draws", 4, "--chains", 2,
                 "--quiet")
    expect(result.returncode == 0, result.stderr)
    expect("rounded to no change" in result.stderr and "llc64" in result.stderr, result.stderr)


def test_float64_chains_move_at_1e12():
    out = os.path.join(TMP, "f64.json")
    # one batch of 32 inputs, so every draw evaluates the same batch and only w changes
    result = llc("estimate", os.path.join(WEIGHTS, "sort_n5.llcw"), "--lr", "1e-12", "--draws", 20, "--chains", 2,
                 "--samples", 32, "--batch", 32, "--quiet", "--json", out, binary=LLC64)
    expect(result.returncode == 0, result.stderr)
    expect("rounded to no change" not in result.stderr, result.stderr)
    data = json.load(open(out))
    expect(data["settings"]["precision"] == "float64", data["settings"]["precision"])
    expect(data["unchanged_update_fraction_nonzero"] == 0, f"{data['unchanged_update_fraction_nonzero']}")
    trace = data["loss_trace"][0]
    expect(len(set(trace)) > 1, "the loss did not change along the chain")


def test_sweep_usage_errors():
    result = llc("sweep", "--programs", "sort", "--lengths", "9:4", "--out", TMP)
    expect(result.returncode == 2 and "--lengths" in result.stderr, result.stderr)
    result = llc("sweep", "--programs", "sorting", "--lengths", "4", "--out", TMP)
    expect(result.returncode == 2 and "sorting" in result.stderr, result.stderr)
    result = llc("sweep", "--programs", "sort", "--lengths", "4", "--out", TMP, "--max-memory", "lots")
    expect(result.returncode == 2 and "--max-memory" in result.stderr, result.stderr)


if __name__ == "__main__":
    sys.exit(run_tests(globals(), "sweep", TMP))
