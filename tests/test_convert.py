#!/usr/bin/env python3
"""Tests of tracr_weights/convert.py.

Usage: python3 tests/test_convert.py
Prints one line per test: "ok NAME", "FAIL NAME: why" or "skip NAME: why".
Reads Tracr's reference models from ../shared/tracr_reference when present.
The export test needs numpy (as export_tracr_model does); it is skipped
without it.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import types
import zipfile

from harness import REFERENCE, WEIGHTS, Skip, expect, llc, run_tests

MODELS = os.path.join(REFERENCE, "models")
CONVERT = os.path.join(WEIGHTS, "convert.py")
sys.path.insert(0, WEIGHTS)

import convert  # noqa: E402  (needs the path set above)

TMP = tempfile.mkdtemp(prefix="llc-convert-")


def reference(name):
    npz = os.path.join(MODELS, name + ".npz")
    if not os.path.exists(npz):
        raise Skip(f"reference model {npz} not found (../shared/tracr_reference is absent)")
    return npz, npz[:-4] + ".json"


def run_convert(*args):
    return subprocess.run([sys.executable, CONVERT, *args], capture_output=True, text=True)


def test_converted_model_loads():
    npz, side = reference("hist_n5")
    out = os.path.join(TMP, "hist.llcw")
    result = run_convert(npz, "-o", out)
    expect(result.returncode == 0, result.stderr)
    info = json.loads(llc("info", out, "--json").stdout)
    expect(info["n_params"] == 1208 and info["n_nonzero"] == 74, f"sizes {info['n_params']} {info['n_nonzero']}")
    expect(info["output_dims"] == json.load(open(side))["output_residual_indices"], "output dims differ")
    expect(info["meta"]["source"] == "tracr", f"meta {info['meta']}")


def test_dense_version_1():
    npz, _ = reference("hist_n5")
    dense, sparse = os.path.join(TMP, "dense.llcw"), os.path.join(TMP, "sparse.llcw")
    expect(run_convert(npz, "-o", dense, "--dense").returncode == 0, "dense conversion failed")
    expect(run_convert(npz, "-o", sparse).returncode == 0, "sparse conversion failed")
    with open(dense, "rb") as f:
        expect(f.read(8)[4:] == b"\x01\x00\x00\x00", "the dense file is not version 1")
    with open(sparse, "rb") as f:
        expect(f.read(8)[4:] == b"\x02\x00\x00\x00", "the sparse file is not version 2")
    diff = llc("diff", dense, sparse, "--tol", "0")
    expect(diff.returncode == 0, diff.stdout[-300:])


def test_missing_npz_named():
    missing = os.path.join(TMP, "nothere.npz")
    result = run_convert(missing, "-o", os.path.join(TMP, "x.llcw"))
    expect(result.returncode == 1, f"exit status {result.returncode}")
    expect("nothere.npz: not found" in result.stderr, result.stderr)


def test_bad_inputs_rejected():
    npz, side = reference("hist_n5")
    not_zip = os.path.join(TMP, "notzip.npz")
    with open(not_zip, "w") as f:
        f.write("hello")
    shutil.copy(side, not_zip[:-4] + ".json")
    result = run_convert(not_zip, "-o", os.path.join(TMP, "x.llcw"))
    expect(result.returncode == 1 and "not a valid .npz" in result.stderr, result.stderr)

    data = json.load(open(side))
    del data["bos_id"]
    broken = os.path.join(TMP, "broken.json")
    json.dump(data, open(broken, "w"))
    result = run_convert(npz, "--json", broken, "-o", os.path.join(TMP, "x.llcw"))
    expect(result.returncode == 1 and "'bos_id'" in result.stderr, result.stderr)

    data = json.load(open(side))
    data["model_config"]["key_size"] += 1
    wrong = os.path.join(TMP, "wrong.json")
    json.dump(data, open(wrong, "w"))
    result = run_convert(npz, "--json", wrong, "-o", os.path.join(TMP, "x.llcw"))
    expect(result.returncode == 1 and "shape" in result.stderr, result.stderr)
    expect(not os.path.exists(os.path.join(TMP, "x.llcw")), "a failed conversion left a file")


def fake_tracr_model(np, npz_path, side):
    """An object with the attributes export_tracr_model reads from Tracr's AssembledTransformerModel."""
    params = {}
    with zipfile.ZipFile(npz_path) as archive:
        import io
        for entry in archive.namelist():
            module, name = entry[:-4].rsplit("/", 1)
            params.setdefault(module, {})[name] = np.load(io.BytesIO(archive.read(entry)))
    tokens = side["input_id_to_token"]
    cfg = side["model_config"]
    model = types.SimpleNamespace(
        params=params,
        residual_labels=side["residual_labels"],
        input_encoder=types.SimpleNamespace(encoding_map={t: i for i, t in enumerate(tokens)}),
        output_encoder=types.SimpleNamespace(
            encoding_map={v: i for i, v in enumerate(side["output_id_to_value"] or [])}),
        model_config=types.SimpleNamespace(num_heads=cfg["num_heads"], num_layers=cfg["num_layers"],
                                           key_size=cfg["key_size"], mlp_hidden_size=cfg["mlp_hidden_size"],
                                           layer_norm=False, causal=False, dropout_rate=0.0))
    program = types.SimpleNamespace(label=side["output_sop_label"], categorical=side["categorical_output"])
    return model, program


def test_export_tracr_model():
    try:
        import numpy as np
    except ImportError:
        raise Skip("numpy is not installed (export_tracr_model needs it, as Tracr does)")
    for name in ("sort_n5", "frac_prevs_n5", "dyck-2_n4"):
        npz, side_path = reference(name)
        side = json.load(open(side_path))
        model, program = fake_tracr_model(np, npz, side)
        # stand-in for tracr.rasp.rasp.is_categorical
        rasp_module = types.ModuleType("tracr.rasp.rasp")
        rasp_module.is_categorical = lambda sop: sop.categorical
        sys.modules["tracr"] = types.ModuleType("tracr")
        sys.modules["tracr.rasp"] = types.ModuleType("tracr.rasp")
        sys.modules["tracr.rasp"].rasp = rasp_module
        sys.modules["tracr.rasp.rasp"] = rasp_module
        prefix = os.path.join(TMP, "exported_" + name)
        convert.export_tracr_model(model, program, prefix, side["max_seq_len"], side["compiler_bos"],
                                   side["compiler_pad"], program_name=side["program"])
        convert.convert(prefix + ".npz", prefix + ".json", prefix + ".llcw")
        convert.convert(npz, side_path, os.path.join(TMP, name + ".llcw"))
        diff = llc("diff", prefix + ".llcw", os.path.join(TMP, name + ".llcw"), "--tol", "0", "--quiet")
        expect(diff.returncode == 0, f"{name}: {diff.stdout[-300:]}")
        exported = json.load(open(prefix + ".json"))
        for key in ("input_id_to_token", "output_residual_indices", "bos_id", "pad_id", "residual_labels"):
            expect(exported[key] == side[key], f"{name}: {key} {exported[key]} vs {side[key]}")


if __name__ == "__main__":
    sys.exit(run_tests(globals(), "converter", TMP))
