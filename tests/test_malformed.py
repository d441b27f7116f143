#!/usr/bin/env python3
"""Hostile inputs: malformed weight files, fuzzer crashes and bad --inputs files.

Usage: python3 tests/test_malformed.py
Runs the llc in $LLC_BUILD (default: the repository root) on every case of
tests/malformed.py, built from tracr_weights/sort_n5.llcw, and on every
file in tests/fuzz/crashes. Each must be rejected with exit status 1 and
one line on stderr that names the file and the problem, and without a
sanitizer report when llc is built with sanitizers (make sanitize).
Prints one line per test: "ok NAME", "FAIL NAME: why" or "skip NAME: why".
"""

import glob
import os
import sys
import tempfile

import harness
import malformed
from harness import LLC, ROOT, WEIGHTS, report

SORT5 = os.path.join(WEIGHTS, "sort_n5.llcw")
FRAC5 = os.path.join(WEIGHTS, "frac_prevs_n5.llcw")
CRASHES = os.path.join(ROOT, "tests", "fuzz", "crashes")

TMP = tempfile.mkdtemp(prefix="llc-malformed-")
SANITIZER_MARKS = ("Sanitizer", "runtime error:", "==ERROR", "WARNING: AddressSanitizer")


def llc(*args, timeout=60):
    return harness.llc(*args, timeout=timeout)


def check_rejection(result, path, fragment):
    """Return why result is not a clean one-line rejection of path, or None."""
    for mark in SANITIZER_MARKS:
        if mark in result.stderr:
            return f"sanitizer report: {result.stderr.strip()[:400]}"
    if result.returncode != 1:
        return f"exit status {result.returncode}, expected 1; stderr: {result.stderr.strip()[:300]}"
    lines = result.stderr.strip().split("\n")
    if len(lines) != 1:
        return f"{len(lines)} lines on stderr, expected 1: {result.stderr.strip()[:300]}"
    if path not in lines[0]:
        return f"the message does not name {path}: {lines[0]}"
    if fragment not in lines[0]:
        return f"the message lacks {fragment!r}: {lines[0]}"
    return None


def run_malformed_corpus():
    with open(SORT5, "rb") as f:
        data = f.read()
    corpus = malformed.cases(data)
    report("malformed corpus size", None if len(corpus) >= 30 else f"only {len(corpus)} cases")
    for name, payload, fragment in corpus:
        path = os.path.join(TMP, name + ".llcw")
        with open(path, "wb") as f:
            f.write(payload)
        report(f"malformed {name}", check_rejection(llc("info", path), path, fragment))


def run_fuzz_crashes():
    """Inputs that once crashed the fuzz harness: each must now load or be rejected cleanly."""
    paths = sorted(glob.glob(os.path.join(CRASHES, "*")))
    if not paths:
        report("fuzz crashes", skipped="tests/fuzz/crashes holds no files")
    for path in paths:
        result = llc("info", path)
        name = f"fuzz crash {os.path.basename(path)}"
        if result.returncode == 0 and not any(m in result.stderr for m in SANITIZER_MARKS):
            report(name)
        else:
            report(name, check_rejection(result, path, ""))


def test_not_a_regular_file():
    fifo = os.path.join(TMP, "fifo.llcw")
    os.mkfifo(fifo)
    # a FIFO with no writer must not block the loader
    for path in (TMP, fifo, "/dev/zero"):
        error = check_rejection(llc("info", path, timeout=10), path, "is not a regular file")
        if error:
            return error
    return check_rejection(llc("info", os.path.join(TMP, "absent.llcw")), "absent.llcw",
                           "No such file")


def oversized_model(**config):
    with open(SORT5, "rb") as f:
        base = malformed.parse(f.read())
    path = os.path.join(TMP, "oversized.llcw")
    with open(path, "wb") as f:
        f.write(malformed.build(malformed.empty_model(base, **config)))
    return path


def test_oversized_model_run():
    # A valid file whose attention activations (T^2 per head) cannot be allocated.
    path = oversized_model(max_seq_len=1 << 24)
    if llc("info", path).returncode != 0:
        return "the oversized model does not load"
    result = llc("run", path, "1", "2")
    # AddressSanitizer warns when, as make sanitize configures it, malloc
    # returns NULL for the request; llc then reports the failure itself.
    lines = [line for line in result.stderr.strip().split("\n")
             if "WARNING: AddressSanitizer failed to allocate" not in line]
    for mark in SANITIZER_MARKS:
        if any(mark in line for line in lines):
            return f"sanitizer report: {result.stderr.strip()[:400]}"
    if result.returncode != 1 or len(lines) != 1 or "for the activations" not in lines[0]:
        return f"exit status {result.returncode}, stderr {result.stderr.strip()[:300]}"
    return None


def test_oversized_model_estimate():
    path = oversized_model(max_seq_len=1 << 24)
    # The memory estimate rejects the job before anything is allocated.
    result = llc("estimate", path, "--quiet")
    lines = result.stderr.strip().split("\n")
    if result.returncode != 1 or len(lines) != 1 or "--max-memory" not in lines[0]:
        return f"exit status {result.returncode}, stderr {result.stderr.strip()[:300]}"
    # Past that limit, 1024 samples of 2^24 + 1 positions exceed the int row indices of a dataset.
    result = llc("estimate", path, "--quiet", "--max-memory", "1e9T")
    lines = result.stderr.strip().split("\n")
    if result.returncode != 1 or len(lines) != 1 or "use fewer samples" not in lines[0]:
        return f"with --max-memory 1e9T: exit status {result.returncode}, stderr {result.stderr.strip()[:300]}"
    return None


def test_quotes_in_json_output():
    # Strings from a file are escaped in JSON: a metadata key with quotes and
    # backslashes, and a metadata value with a newline and a tab.
    import json
    with open(SORT5, "rb") as f:
        model = malformed.parse(f.read())
    key, value = 'note "quoted" \\ key', "line one\nline\ttwo"
    model.meta.append((key.encode(), value.encode()))
    model.header["n_meta"] += 1
    path = os.path.join(TMP, "quotes.llcw")
    with open(path, "wb") as f:
        f.write(malformed.build(model))
    result = llc("info", path, "--json")
    if result.returncode != 0:
        return f"exit status {result.returncode}: {result.stderr.strip()[:300]}"
    try:
        meta = json.loads(result.stdout)["meta"]
    except ValueError as err:
        return f"info --json is not valid JSON: {err}"
    return None if meta.get(key) == value else f"metadata {meta!r}"


INPUT_CASES = [
    # (name, model, file bytes, message fragment)
    ("nul byte", SORT5, b"1 2\x003\n", "NUL byte"),
    ("long line", SORT5, b"1 " * 40000 + b"\n", "longer than"),
    ("unknown token", SORT5, b"1 2 9\n", 'token "9"'),
    ("bos token", SORT5, b"bos 1\n", 'token "bos"'),
    ("too many tokens", SORT5, b"1 2 3 4 5 1\n", "more than max_seq_len"),
    ("mixed labels", SORT5, b"1 2 | 1 2\n2 1\n", "either every line"),
    ("more labels", SORT5, b"1 2 | 1 2 3\n", "more labels"),
    ("unknown label", SORT5, b"1 2 | 1 9\n", 'label "9"'),
    ("only labels", SORT5, b"| 1\n", "no tokens"),
    ("no sequences", SORT5, b"# nothing\n\n", "no sequences"),
    ("label overflows float32", FRAC5, b"a b | 1e39 0\n", "not a finite"),
    ("label nan", FRAC5, b"a b | nan 0\n", "not a finite"),
]


def test_inputs_files():
    for name, model, payload, fragment in INPUT_CASES:
        path = os.path.join(TMP, "inputs.txt")
        with open(path, "wb") as f:
            f.write(payload)
        error = check_rejection(llc("run", model, "--inputs", path), path, fragment)
        if error:
            return f"{name}: {error}"
    return check_rejection(llc("run", SORT5, "--inputs", TMP), TMP, "Is a directory")


def main():
    if not os.path.exists(LLC):
        print(f"FAIL malformed files: {LLC} is not built (run make)")
        return 1
    run_malformed_corpus()
    run_fuzz_crashes()
    for name, fn in sorted(globals().items()):
        if name.startswith("test_") and callable(fn):
            report(name[5:].replace("_", " "), fn())
    return 1 if harness.failures else 0


if __name__ == "__main__":
    sys.exit(main())
