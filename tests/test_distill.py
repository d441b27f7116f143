#!/usr/bin/env python3
"""Tests of llc distill and llc study-distill on the shipped models.

Usage: python3 tests/test_distill.py
Prints one line per test: "ok NAME", "FAIL NAME: why" or "skip NAME: why".
Uses the reference cases in ../shared/tracr_reference when present.
"""

import json
import os
import random
import sys
import tempfile
import xml.etree.ElementTree as ET

from harness import REFERENCE, SVG, WEIGHTS, expect, llc, run_tests

CASES = os.path.join(REFERENCE, "cases")
TMP = tempfile.mkdtemp(prefix="llc-distill-")


def distill(model, shrink, steps, name, *extra):
    out = os.path.join(TMP, name + ".llcw")
    js = os.path.join(TMP, name + ".json")
    result = llc("distill", os.path.join(WEIGHTS, model + ".llcw"), "-o", out, "--shrink", shrink, "--steps", steps,
                 "--json", js, "--quiet", *extra)
    expect(result.returncode == 0, f"distill {model} exited {result.returncode}: {result.stderr.strip()}")
    return out, json.load(open(js))


def case_inputs(model):
    """Inputs of the reference cases, or 200 random inputs when they are absent."""
    path = os.path.join(CASES, model + "_cases.json")
    if os.path.exists(path):
        cases = json.load(open(path))["cases"]
        return [" ".join(str(t) for t in c["tokens"]) for c in cases], "reference cases"
    vocab = json.loads(llc("info", os.path.join(WEIGHTS, model + ".llcw"), "--json").stdout)["vocab"]
    vocab = [v for v in vocab if v not in ("bos", "pad")]
    rng = random.Random(3)
    return [" ".join(rng.choice(vocab) for _ in range(rng.randint(1, 5))) for _ in range(200)], "random inputs"


def outputs(model_path, inputs):
    path = os.path.join(TMP, "inputs.txt")
    with open(path, "w") as f:
        f.write("\n".join(inputs) + "\n")
    result = llc("run", model_path, "--inputs", path)
    expect(result.returncode == 0, result.stderr)
    return [line.split() for line in result.stdout.strip("\n").split("\n")]


def check_restored(model, shrink, steps):
    student, data = distill(model, shrink, steps, f"{model}_{shrink}")
    expect(data["restored"] is True, f"agreement {data['agreement']} after {steps} steps")
    expect(data["loss"] == "kl", f"loss {data['loss']}")
    info = json.loads(llc("info", student, "--json").stdout)
    expect(info["n_params"] == data["n_params"], f"info n_params {info['n_params']} vs {data['n_params']}")
    expect(info["d_model"] == data["d_model"], "d_model differs")
    expect(info["meta"]["teacher"].endswith(model + ".llcw"), f"teacher {info['meta'].get('teacher')}")
    inputs, kind = case_inputs(model)
    teacher_out = outputs(os.path.join(WEIGHTS, model + ".llcw"), inputs)
    student_out = outputs(student, inputs)
    pairs = [(a, b) for ta, tb in zip(teacher_out, student_out) for a, b in zip(ta, tb)]
    rate = sum(a == b for a, b in pairs) / len(pairs)
    # held-out inputs are random, the cases partly edge cases: allow a small gap
    expect(rate >= data["agreement"] - 0.03, f"agreement on {kind} {rate:.4f}, reported {data['agreement']:.4f}")


def test_sort_shrink_0_restored():
    check_restored("sort_n5", 0, 3000)


def test_sort_shrink_48_restored():
    check_restored("sort_n5", 0.48, 3000)


def test_hist_shrink_0_restored():
    check_restored("hist_n5", 0, 20000)


def test_hist_shrink_48_restored():
    check_restored("hist_n5", 0.48, 20000)


def test_numerical_teacher_uses_mse():
    _, data = distill("frac_prevs_n5", 0, 300, "frac_prevs")
    expect(data["loss"] == "mse", f"loss {data['loss']}")
    expect(data["final_loss"] >= 0, f"final_loss {data['final_loss']}")


def test_distill_is_deterministic():
    a, da = distill("hist_n5", 0.3, 200, "det_a", "--seed", 4)
    b, db = distill("hist_n5", 0.3, 200, "det_b", "--seed", 4)
    c, _ = distill("hist_n5", 0.3, 200, "det_c", "--seed", 5)
    with open(a, "rb") as fa, open(b, "rb") as fb, open(c, "rb") as fc:
        bytes_a, bytes_b, bytes_c = fa.read(), fb.read(), fc.read()
    # the files differ only in the output name recorded nowhere, so compare the weights
    expect(llc("diff", a, b, "--tol", "0").returncode == 0, "two runs with seed 4 differ")
    expect(llc("diff", a, c, "--tol", "0").returncode == 1, "seeds 4 and 5 give the same student")
    expect(da["final_loss"] == db["final_loss"], "final losses differ")
    expect(len(bytes_a) == len(bytes_b), "file sizes differ")
    expect(bytes_a != bytes_c, "files of different seeds are identical")


def test_student_estimate_uses_kl():
    student, _ = distill("sort_n5", 0.48, 300, "est")
    out = os.path.join(TMP, "student_llc.json")
    result = llc("estimate", student, "--chains", 2, "--draws", 10, "--quiet", "--json", out)
    expect(result.returncode == 0, result.stderr)
    data = json.load(open(out))
    expect(data["loss"] == "kl", f"loss {data['loss']}")
    expect(data["settings"]["teacher"].endswith("sort_n5.llcw"), f"teacher {data['settings']['teacher']}")


def test_distill_usage_errors():
    teacher = os.path.join(WEIGHTS, "sort_n5.llcw")
    result = llc("distill", teacher, "-o", os.path.join(TMP, "x.llcw"), "--shrink", 1)
    expect(result.returncode == 2 and "[0, 1)" in result.stderr, result.stderr)
    result = llc("distill", teacher, "--shrink", 0.5)
    expect(result.returncode == 2 and "-o" in result.stderr, result.stderr)


def svg_texts(path):
    root = ET.parse(path).getroot()   # raises on invalid XML
    expect(root.tag == SVG + "svg", f"root element {root.tag}")
    return [t.text for t in root.iter(SVG + "text")]


def test_study_distill_outputs():
    out = os.path.join(TMP, "study")
    result = llc("study-distill", "sort", "frac_prevs", "--shrink", "0,0.5", "--draws", 10, "--chains", 2,
                 "--distill-steps", 100, "--out", out, "--quiet")
    expect(result.returncode == 0, result.stderr)
    rows = open(os.path.join(out, "distill.csv")).read().strip().split("\n")
    expect(len(rows) == 1 + 2 * 3, f"{len(rows)} CSV lines")
    expect(rows[0].startswith("program,max_seq_len,model,shrink"), rows[0])
    table = open(os.path.join(out, "distill.md")).read()
    expect("| Program | Teacher | 0 % shrunk | 50 % shrunk |" in table, table[:200])
    expect("The teachers' LLC uses the KL to themselves (squared error for numerical outputs)" in table,
           table[-400:])
    expect(table.count("\n| sort |") == 1 and table.count("\n| frac_prevs |") == 1, table)
    for name, labels in (("traces_sort.svg", ["draw", "mean over chains of loss - init_loss", "teacher (kl loss)",
                                              "student, 0 % shrunk (kl to the teacher)"]),
                         ("traces_frac_prevs.svg", ["teacher (mse loss)",
                                                    "student, 0 % shrunk (mse to the teacher)"]),
                         ("llc_vs_shrink.svg", ["shrink fraction of d_model and d_mlp", "llc_mean", "sort"]),
                         ("kl_vs_shrink.svg", ["shrink fraction of d_model and d_mlp", "frac_prevs"])):
        texts = svg_texts(os.path.join(out, name))
        for label in labels:
            expect(label in texts, f"{name} lacks the text {label!r}")


if __name__ == "__main__":
    sys.exit(run_tests(globals(), "distillation", TMP))
