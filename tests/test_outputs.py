#!/usr/bin/env python3
"""Command-line tests of the files llc writes, on the shipped models only.

The tests write outputs through symbolic links, FIFOs and stdout, and give
outputs that are the same file as an input or as another output. They also
cover seeds up to 2^64 - 1, JSON strings from names that are not valid
UTF-8, CSV text fields, and numbers out of range in job files and
--lengths.

Usage: python3 tests/test_outputs.py
Prints one line per test: "ok NAME", "FAIL NAME: why" or "skip NAME: why".
"""

import csv
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile

from harness import LLC, WEIGHTS, expect, expect_status, llc, run_tests

SORT5 = os.path.join(WEIGHTS, "sort_n5.llcw")
TINY = ["--chains", 2, "--draws", 4, "--samples", 32, "--batch", 8, "--quiet"]
TMP = tempfile.mkdtemp(prefix="llc-outputs-")


def fresh_folder(name):
    """Returns an empty folder TMP/name."""
    folder = os.path.join(TMP, name)
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    return folder


def leftover_temporary_files(*folders):
    return [name for folder in folders for name in os.listdir(folder) if ".tmp" in name]


# Symbolic links, FIFOs and stdout as outputs ---------------------------------

def test_symlink_output_written_through():
    folder = fresh_folder("link")
    os.makedirs(os.path.join(folder, "real"))
    link = os.path.join(folder, "out.json")
    os.symlink(os.path.join("real", "t.json"), link)
    expect_status(llc("estimate", SORT5, *TINY, "--json", link), 0)
    expect(os.path.islink(link), "the symbolic link was replaced by a file")
    expect(os.readlink(link) == os.path.join("real", "t.json"), f"the link now points to {os.readlink(link)}")
    with open(os.path.join(folder, "real", "t.json")) as f:
        expect(json.load(f)["program"] == "sort", "the link's target lacks the results")
    leftovers = leftover_temporary_files(folder, os.path.join(folder, "real"))
    expect(not leftovers, f"temporary files left behind: {leftovers}")


def test_symlink_output_replaces_existing_target():
    folder = fresh_folder("link_existing")
    target = os.path.join(folder, "trace.csv")
    with open(target, "w") as f:
        f.write("old\n")
    link = os.path.join(folder, "trace_link.csv")
    os.symlink("trace.csv", link)
    expect_status(llc("estimate", SORT5, *TINY, "--trace", link), 0)
    expect(os.path.islink(link), "the symbolic link was replaced by a file")
    with open(target) as f:
        expect(f.readline() == "chain,draw,step,loss\n", "the link's target still has the old text")


def test_fifo_output_written_directly():
    folder = fresh_folder("fifo")
    fifo = os.path.join(folder, "trace.fifo")
    os.mkfifo(fifo)
    # A reader opened without blocking lets llc's open for writing succeed.
    # The trace of 2 x 4 draws fits in the FIFO's buffer, so llc never waits.
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        result = llc("estimate", SORT5, *TINY, "--trace", fifo, timeout=60)
        received = b""
        while True:
            try:
                chunk = os.read(reader, 65536)
            except BlockingIOError:
                break
            if not chunk:
                break
            received += chunk
    finally:
        os.close(reader)
    expect_status(result, 0)
    expect(stat.S_ISFIFO(os.lstat(fifo).st_mode), "the FIFO was replaced by a regular file")
    expect(received.startswith(b"chain,draw,step,loss\n"), f"the FIFO's reader got {received[:60]!r}")
    expect(len(received.decode().strip().split("\n")) == 9, f"the FIFO's reader got {received!r}")
    expect(not leftover_temporary_files(folder), "a temporary file was left next to the FIFO")


def test_stdout_pipe_as_output():
    # Through a link in the test folder: a build that still renames over its
    # outputs replaces this link, never /dev/stdout itself.
    folder = fresh_folder("stdout_pipe")
    link = os.path.join(folder, "stdout.json")
    os.symlink("/dev/stdout", link)
    result = llc("estimate", SORT5, *TINY, "--json", link)
    expect_status(result, 0)
    expect(os.path.islink(link), "the link to /dev/stdout was replaced")
    data = json.loads(result.stdout[result.stdout.index("{"):])
    expect(data["program"] == "sort", "the JSON on stdout lacks the program")


def test_stdout_file_keeps_summary():
    folder = fresh_folder("stdout_file")
    link = os.path.join(folder, "stdout.json")
    os.symlink("/dev/stdout", link)
    captured = os.path.join(folder, "captured.txt")
    with open(captured, "w") as out:
        status = subprocess.run([LLC, "estimate", SORT5, *map(str, TINY), "--json", link], stdout=out,
                                stderr=subprocess.PIPE, timeout=60).returncode
    expect(status == 0, f"exit status {status}")
    expect(os.path.islink(link), "the link to /dev/stdout was replaced")
    with open(captured) as f:
        text = f.read()
    expect(text.startswith("model "), f"the summary on stdout was overwritten: {text[:80]!r}")
    expect(json.loads(text[text.index("{"):])["program"] == "sort", "the JSON after the summary is not valid")


def test_symlink_output_folder_checked():
    folder = fresh_folder("dangling")
    link = os.path.join(folder, "out.json")
    os.symlink(os.path.join("missing", "t.json"), link)
    result = llc("estimate", SORT5, *TINY, "--json", link)
    expect_status(result, 1, "missing", "does not exist")


# Outputs that are inputs or other outputs -------------------------------------

def copy_model(folder, name="model.llcw", source=SORT5):
    path = os.path.join(folder, name)
    shutil.copy(source, path)
    return path


def expect_unchanged(path, source):
    with open(path, "rb") as a, open(source, "rb") as b:
        expect(a.read() == b.read(), f"{os.path.basename(path)} was overwritten")


def test_estimate_json_is_model():
    folder = fresh_folder("estimate_model")
    model = copy_model(folder)
    result = llc("estimate", model, *TINY, "--json", model)
    expect_status(result, 2, "--json", "same file as the input MODEL")
    expect(result.stderr.count(model) == 2, f"the message does not name both paths: {result.stderr.strip()}")
    expect_unchanged(model, SORT5)


def test_estimate_trace_is_inputs():
    folder = fresh_folder("estimate_inputs")
    inputs = os.path.join(folder, "inputs.txt")
    with open(inputs, "w") as f:
        f.write("1 2 3\n3 2 1\n")
    result = llc("estimate", SORT5, *TINY, "--inputs", inputs, "--trace", inputs)
    expect_status(result, 2, "--trace", "same file as the input --inputs")
    with open(inputs) as f:
        expect(f.read() == "1 2 3\n3 2 1\n", "the inputs file was overwritten")


def test_estimate_json_is_teacher_via_link():
    folder = fresh_folder("estimate_teacher")
    teacher = copy_model(folder, "teacher.llcw")
    link = os.path.join(folder, "link.json")
    os.symlink("teacher.llcw", link)
    result = llc("estimate", SORT5, *TINY, "--teacher", teacher, "--json", link)
    expect_status(result, 2, "same file as the input --teacher")
    expect_unchanged(teacher, SORT5)


def test_estimate_json_is_recorded_teacher():
    folder = fresh_folder("estimate_recorded_teacher")
    teacher = copy_model(folder, "teacher.llcw")
    student = os.path.join(folder, "student.llcw")
    result = llc("distill", teacher, "-o", student, "--shrink", 0.5, "--steps", 5, "--quiet")
    expect(result.returncode == 0, result.stderr)
    result = llc("estimate", student, *TINY, "--json", teacher)
    expect_status(result, 2, "is the teacher recorded in")
    expect_unchanged(teacher, SORT5)


def student_with_teacher(folder):
    """Distils folder/student.llcw from a copy of sort_n5 at folder/teacher.llcw; returns both paths."""
    teacher = copy_model(folder, "teacher.llcw")
    student = os.path.join(folder, "student.llcw")
    result = llc("distill", teacher, "-o", student, "--shrink", 0.5, "--steps", 5, "--quiet")
    expect(result.returncode == 0, result.stderr)
    return teacher, student


def test_calibrate_and_landscape_spare_recorded_teacher():
    folder = fresh_folder("recorded_teacher_outputs")
    teacher, student = student_with_teacher(folder)
    result = llc("calibrate", student, "--chains", 2, "--draws", 4, "--samples", 32, "--batch", 8, "--lr-grid", "1e-5",
                 "--nbeta-grid", 3, "--csv", teacher)
    expect_status(result, 2, "is the teacher recorded in")
    result = llc("landscape", student, "--grid", 3, "--batches", 2, "--batch", 8, "--samples", 32, "--svg", teacher)
    expect_status(result, 2, "is the teacher recorded in")
    expect_unchanged(teacher, SORT5)


def test_recorded_teacher_not_taken_from_working_folder():
    folder = fresh_folder("recorded_teacher_missing")
    teacher, student = student_with_teacher(folder)
    os.remove(teacher)
    other = fresh_folder("recorded_teacher_elsewhere")
    shutil.copy(os.path.join(WEIGHTS, "sort_unique_n5.llcw"), os.path.join(other, "teacher.llcw"))
    result = subprocess.run((LLC, "estimate", student, *[str(a) for a in TINY]), cwd=other, capture_output=True,
                            text=True)
    expect_status(result, 1, "the teacher recorded in", "cannot be opened at " + teacher)


def test_distill_through_link_records_teacher():
    folder = fresh_folder("distill_link")
    teacher = copy_model(folder, "teacher.llcw")
    os.makedirs(os.path.join(folder, "sub"))
    link = os.path.join(folder, "link.llcw")
    os.symlink(os.path.join("sub", "real.llcw"), link)
    result = llc("distill", teacher, "-o", link, "--shrink", 0.5, "--steps", 5, "--quiet")
    expect(result.returncode == 0, result.stderr)
    info = json.loads(llc("info", os.path.join(folder, "sub", "real.llcw"), "--json").stdout)
    expect(info["meta"]["teacher"] == "../teacher.llcw", f"recorded teacher {info['meta']['teacher']}")


def test_incomplete_name_is_input():
    folder = fresh_folder("incomplete_input")
    teacher = copy_model(folder, "x.llcw.incomplete")
    result = llc("distill", teacher, "-o", os.path.join(folder, "x.llcw"), "--shrink", 0.5, "--steps", 5)
    expect_status(result, 2, "an interrupted run writes -o", "the input TEACHER")
    json_path = os.path.join(folder, "a")
    result = llc("estimate", SORT5, *TINY, "--json", json_path, "--trace", json_path + ".incomplete")
    expect_status(result, 2, "an interrupted run writes --json", "the output --trace")
    expect_unchanged(teacher, SORT5)


def test_landscape_opens_every_model_first():
    folder = fresh_folder("landscape_missing")
    missing = os.path.join(folder, "missing.llcw")
    result = llc("landscape", SORT5, missing, "--grid", 3, "--batches", 2, "--batch", 8, "--samples", 32)
    expect_status(result, 1, "missing.llcw")
    expect("model " not in result.stdout, f"the first model was computed before the check: {result.stdout[:200]}")


def test_replaced_output_keeps_permissions():
    folder = fresh_folder("permissions")
    out = os.path.join(folder, "private.json")
    with open(out, "w") as f:
        f.write("{}\n")
    os.chmod(out, 0o600)
    result = llc("estimate", SORT5, *TINY, "--json", out)
    expect(result.returncode == 0, result.stderr)
    mode = stat.S_IMODE(os.stat(out).st_mode)
    expect(mode == 0o600, f"mode {oct(mode)} after the output was replaced, expected 0o600")


def test_long_output_name_rejected_up_front():
    folder = fresh_folder("long_name")
    out = os.path.join(folder, "a" * 245 + ".json")
    result = llc("estimate", SORT5, "--draws", 100000, "--json", out)
    expect_status(result, 1, "the file name is 250 bytes long")
    expect("llc_mean" not in result.stdout, "the estimate ran before the name was checked")


def test_estimate_outputs_same_new_file():
    folder = fresh_folder("estimate_outputs")
    json_path = os.path.join(folder, "out")
    trace_path = os.path.join(folder, ".", "out")
    result = llc("estimate", SORT5, *TINY, "--json", json_path, "--trace", trace_path)
    expect_status(result, 2, "name the same file")
    expect(not os.path.exists(json_path), "the output was written")


def test_landscape_svg_is_model():
    folder = fresh_folder("landscape")
    model = copy_model(folder)
    result = llc("landscape", model, "--grid", 3, "--batches", 2, "--batch", 4, "--samples", 8, "--quiet",
                 "--svg", model)
    expect_status(result, 2, "--svg", "same file as the input MODEL")
    expect_unchanged(model, SORT5)


def test_landscape_csv_is_second_model():
    folder = fresh_folder("landscape_second")
    model = copy_model(folder, "second.llcw")
    result = llc("landscape", SORT5, model, "--grid", 3, "--batches", 2, "--batch", 4, "--samples", 8, "--quiet",
                 "--csv", model)
    expect_status(result, 2, "--csv", "same file as the input MODEL")
    expect_unchanged(model, SORT5)


def test_calibrate_csv_is_teacher():
    folder = fresh_folder("calibrate")
    teacher = copy_model(folder, "teacher.llcw")
    result = llc("calibrate", SORT5, "--teacher", teacher, "--lr-grid", "1e-5", "--nbeta-grid", 1, *TINY,
                 "--csv", teacher)
    expect_status(result, 2, "--csv", "same file as the input --teacher")
    expect_unchanged(teacher, SORT5)


def test_calibrate_csv_and_svg_same():
    folder = fresh_folder("calibrate_outputs")
    path = os.path.join(folder, "grid")
    result = llc("calibrate", SORT5, "--lr-grid", "1e-5", "--nbeta-grid", 1, *TINY, "--csv", path, "--svg", path)
    expect_status(result, 2, "--csv", "--svg", "name the same file")


def test_distill_json_is_student():
    folder = fresh_folder("distill")
    student = os.path.join(folder, "student.llcw")
    result = llc("distill", SORT5, "-o", student, "--json", student, "--shrink", 0.5, "--steps", 2, "--quiet")
    expect_status(result, 2, "-o", "--json", "name the same file")
    expect(not os.path.exists(student), "the student was written")


def test_distill_json_is_teacher():
    folder = fresh_folder("distill_teacher")
    teacher = copy_model(folder, "teacher.llcw")
    result = llc("distill", teacher, "-o", os.path.join(folder, "s.llcw"), "--json", teacher, "--shrink", 0.5,
                 "--steps", 2, "--quiet")
    expect_status(result, 2, "--json", "same file as the input TEACHER")
    expect_unchanged(teacher, SORT5)


# Seeds up to 2^64 - 1, written and compared exactly --------------------------

MAX_SEED = 2**64 - 1
# One sweep job, small enough to take well under a second.
SWEEP = ["sweep", "--programs", "hist", "--lengths", 5, "--lr", "1e-5", "--draws", 4, "--chains", 2,
         "--samples", 64, "--batch", 8, "--quiet"]


def results_rows(folder):
    with open(os.path.join(folder, "results.csv"), newline="") as f:
        return list(csv.DictReader(f))


def test_estimate_json_max_seed():
    path = os.path.join(fresh_folder("seed_estimate"), "out.json")
    expect_status(llc("estimate", SORT5, *TINY, "--seed", MAX_SEED, "--json", path), 0)
    with open(path) as f:
        seed = json.load(f)["settings"]["seed"]
    expect(seed == MAX_SEED, f"seed {seed} in the JSON, expected {MAX_SEED}")


def test_distill_json_max_seed():
    folder = fresh_folder("seed_distill")
    path = os.path.join(folder, "out.json")
    result = llc("distill", SORT5, "-o", os.path.join(folder, "s.llcw"), "--shrink", 0.5, "--steps", 2,
                 "--eval-samples", 8, "--seed", MAX_SEED, "--json", path, "--quiet")
    expect_status(result, 0)
    with open(path) as f:
        seed = json.load(f)["settings"]["seed"]
    expect(seed == MAX_SEED, f"seed {seed} in the JSON, expected {MAX_SEED}")


def test_landscape_json_max_seed():
    path = os.path.join(fresh_folder("seed_landscape"), "out.json")
    result = llc("landscape", SORT5, "--grid", 3, "--batches", 2, "--batch", 4, "--samples", 8, "--quiet",
                 "--seed", MAX_SEED, "--json", path)
    expect_status(result, 0)
    with open(path) as f:
        seed = json.load(f)["settings"]["seed"]
    expect(seed == MAX_SEED, f"seed {seed} in the JSON, expected {MAX_SEED}")


def test_sweep_resume_max_seed():
    folder = os.path.join(fresh_folder("seed_sweep_max"), "sweep")
    expect_status(llc(*SWEEP, "--seed", MAX_SEED, "--out", folder), 0)
    again = llc(*SWEEP, "--seed", MAX_SEED, "--out", folder)
    expect_status(again, 0)
    expect("1 done before" in again.stdout, f"the finished job was not recognised: {again.stdout.strip()}")
    seeds = [row["seed"] for row in results_rows(folder)]
    expect(seeds == [str(MAX_SEED)], f"seeds in results.csv: {seeds}")


def test_sweep_resume_default_nbeta():
    # The default nbeta at batch 8, 8 / ln 8 = 3.8471867757..., is written
    # as 3.84718678: 1.1e-9 of the value away.
    folder = os.path.join(fresh_folder("sweep_nbeta"), "sweep")
    expect_status(llc(*SWEEP, "--out", folder), 0)
    again = llc(*SWEEP, "--out", folder)
    expect_status(again, 0)
    expect("1 done before" in again.stdout, f"the finished job was not recognised: {again.stdout.strip()}")


def test_sweep_resume_close_seed():
    folder = os.path.join(fresh_folder("seed_sweep_close"), "sweep")
    expect_status(llc(*SWEEP, "--seed", 10**12, "--out", folder), 0)
    again = llc(*SWEEP, "--seed", 10**12 + 1, "--out", folder)
    expect_status(again, 1, "other settings", f"seed {10**12} there, {10**12 + 1} now")
    seeds = [row["seed"] for row in results_rows(folder)]
    expect(seeds == [str(10**12)], f"seeds in results.csv: {seeds}")


# Well-formed JSON text ---------------------------------------------------------

def bad_name_model():
    """Returns the bytes path of a copy of sort_n5 whose name is not valid UTF-8."""
    folder = fresh_folder("bad_name").encode()
    path = os.path.join(folder, b"bad\xff.llcw")
    shutil.copy(SORT5, path)
    return path


def test_info_json_invalid_utf8_path():
    path = bad_name_model()
    result = subprocess.run([LLC.encode(), b"info", path, b"--json"], capture_output=True, timeout=60)
    expect(result.returncode == 0, f"exit status {result.returncode}: {result.stderr[-300:]!r}")
    text = result.stdout.decode("utf-8")   # strict: fails on bytes that are not UTF-8
    path = json.loads(text)["path"]
    expect(path.endswith("bad\ufffd.llcw"), f"path {path!r}")


def test_estimate_json_invalid_utf8_path():
    path = bad_name_model()
    out = os.path.join(TMP, "bad_name", "out.json")
    result = subprocess.run([LLC.encode(), b"estimate", path, *(str(a).encode() for a in TINY), b"--json",
                             out.encode()], capture_output=True, timeout=60)
    expect(result.returncode == 0, f"exit status {result.returncode}: {result.stderr[-300:]!r}")
    with open(out, "rb") as f:
        data = json.loads(f.read().decode("utf-8"))
    expect(data["model"].endswith("bad\ufffd.llcw"), f"model {data['model']!r}")


# Well-formed CSV text ----------------------------------------------------------

def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_job(folder, name, job):
    with open(os.path.join(folder, "jobs", name), "w") as f:
        json.dump(job, f)


def test_collect_quotes_text_fields():
    folder = fresh_folder("collect_quotes")
    os.makedirs(os.path.join(folder, "jobs"))
    program = 'we"ird,name\r\nx'
    status = 'failed: "x", then y'
    write_job(folder, "a.json", {"program": program, "max_seq_len": 5, "status": status,
                                 "settings": {"lr": 1e-5, "lr_scale": "li,ne\"ar"}})
    write_job(folder, "b.json", {"program": "sort", "max_seq_len": 6, "settings": {"lr": 1e-5}})
    result = llc("collect", folder)
    expect_status(result, 0)
    rows = read_csv(os.path.join(folder, "results.csv"))
    expect(len(rows) == 2, f"{len(rows)} rows, expected 2")
    quoted = [r for r in rows if r["max_seq_len"] == "5"][0]
    expect(quoted["program"] == program, f"program {quoted['program']!r}")
    expect(quoted["status"] == status, f"status {quoted['status']!r}")
    expect(quoted["lr_scale"] == 'li,ne"ar', f"lr_scale {quoted['lr_scale']!r}")


def test_collect_skips_fifo_and_folder():
    folder = fresh_folder("collect_fifo")
    os.makedirs(os.path.join(folder, "jobs", "folder.json"))
    os.mkfifo(os.path.join(folder, "jobs", "fifo.json"))
    write_job(folder, "a.json", {"program": "sort", "max_seq_len": 6, "settings": {"lr": 1e-5}})
    result = llc("collect", folder, timeout=30)
    expect_status(result, 1, "fifo.json cannot be read (not a regular file)",
                  "folder.json cannot be read (not a regular file)")
    expect(len(read_csv(os.path.join(folder, "results.csv"))) == 1, "expected the one job's row")


def test_collect_warns_about_duplicate_job():
    folder = fresh_folder("collect_duplicate")
    os.makedirs(os.path.join(folder, "jobs"))
    job = {"program": "sort", "max_seq_len": 6, "base_lr": 1e-5, "settings": {"lr": 1e-5, "lr_scale": "none"}}
    write_job(folder, "sort_n6_lr1e-05.json", job)
    write_job(folder, "backup.json", job)
    result = llc("collect", folder)
    expect_status(result, 0, "holds two results for sort at max_seq_len 6")


def test_collect_missing_numbers_empty():
    folder = fresh_folder("collect_missing")
    os.makedirs(os.path.join(folder, "jobs"))
    write_job(folder, "a.json", {"program": "sort", "max_seq_len": 5, "settings": {"lr": 1e-5}})
    expect_status(llc("collect", folder), 0)
    row = read_csv(os.path.join(folder, "results.csv"))[0]
    for column in ("chains", "draws", "seed", "llc_mean", "n_params"):
        expect(row[column] == "", f"{column} is {row[column]!r}, expected an empty field")


def test_plot_reads_quoted_program():
    folder = fresh_folder("plot_quoted")
    os.makedirs(os.path.join(folder, "jobs"))
    for n, llc_mean in ((5, 1.5), (6, 2.5)):
        write_job(folder, f"j{n}.json", {"program": "so,rt", "max_seq_len": n, "llc_mean": llc_mean,
                                         "sparsity": 0.1, "settings": {"lr": 1e-5}})
    expect_status(llc("collect", folder), 0)
    expect_status(llc("plot", folder), 0)
    svgs = [name for name in os.listdir(folder) if name.endswith(".svg")]
    expect(len(svgs) == 1, f"plots: {svgs}")
    with open(os.path.join(folder, svgs[0])) as f:
        text = f.read()
    expect(">so,rt<" in text, "the plot lacks the program so,rt")


def test_landscape_csv_quotes_model():
    folder = fresh_folder("landscape_quotes")
    model = copy_model(folder, "with,comma.llcw")
    out = os.path.join(folder, "grid.csv")
    result = llc("landscape", SORT5, model, "--grid", 2, "--batches", 2, "--batch", 4, "--samples", 8, "--quiet",
                 "--csv", out)
    expect_status(result, 0)
    rows = read_csv(out)
    expect(len(rows) == 8, f"{len(rows)} rows, expected 2 models x 4 grid points")
    expect({r["model"] for r in rows} == {SORT5, model}, f"models {sorted({r['model'] for r in rows})}")


def test_study_distill_csv_quotes_and_empty():
    folder = os.path.join(fresh_folder("study_quotes"), "out,dir")
    # --lr 1e3 makes every chain diverge, so the LLC is not a number.
    result = llc("study-distill", "sort", "--out", folder, "--draws", 4, "--chains", 2, "--samples", 32,
                 "--batch", 8, "--distill-steps", 2, "--shrink", 0.5, "--lr", 1e3, "--quiet")
    expect_status(result, 0)
    with open(os.path.join(folder, "distill.csv"), newline="") as f:
        text = f.read()
    expect("nan" not in text, f"distill.csv contains nan: {text}")
    rows = list(csv.DictReader(text.splitlines()))
    expect(len(rows) == 2, f"{len(rows)} rows, expected the teacher and one student")
    student = rows[1]
    expect(student["path"] == os.path.join(folder, "sort_n5_shrink0.5.llcw"), f"path {student['path']!r}")
    expect(student["llc_mean"] == "" and student["llc_std"] == "", f"llc {student['llc_mean']!r}")


# Numbers out of range ----------------------------------------------------------

def test_collect_rejects_huge_max_seq_len():
    folder = fresh_folder("collect_huge")
    os.makedirs(os.path.join(folder, "jobs"))
    write_job(folder, "huge.json", {"program": "sort", "max_seq_len": 1e30, "settings": {"lr": 1e-5}})
    write_job(folder, "fraction.json", {"program": "sort", "max_seq_len": 5.5, "settings": {"lr": 1e-5}})
    write_job(folder, "good.json", {"program": "sort", "max_seq_len": 5, "settings": {"lr": 1e-5}})
    result = llc("collect", folder)
    expect_status(result, 1, "huge.json has max_seq_len 1e+30", "fraction.json has max_seq_len 5.5")
    rows = read_csv(os.path.join(folder, "results.csv"))
    expect([r["max_seq_len"] for r in rows] == ["5"], f"max_seq_len of the rows: {[r['max_seq_len'] for r in rows]}")


def test_sweep_lengths_out_of_range():
    folder = fresh_folder("sweep_lengths")
    for lengths in ("5:6:9223372036854775807", "5:6:101", "101", "4:101", "0:5", "99999999999999999999"):
        out = os.path.join(folder, "sweep")
        result = llc("sweep", "--programs", "sort", "--lengths", lengths, "--out", out, "--emit-jobs",
                     "--max-memory", "1M")
        expect_status(result, 2, "--lengths", "from 1 to 100", lengths)
        expect(not os.path.exists(out), f"--lengths {lengths}: the sweep created its folder")


if __name__ == "__main__":
    sys.exit(run_tests(globals(), "output files", TMP))
