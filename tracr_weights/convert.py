#!/usr/bin/env python3
"""Convert a Tracr-compiled model to llc's weight format (LLCW).

Usage:
    python3 tracr_weights/convert.py NAME.npz -o NAME.llcw [--json NAME.json] [--dense]

Input is a pair of files: NAME.npz holds the Haiku parameters of the
compiled model (keys such as "transformer/layer_0/attn/query/w", written by
numpy.savez) and NAME.json is the sidecar that records the vocabulary, the
BOS/PAD ids, the output encoding and the residual labels. Users with Tracr
installed write that pair with export_tracr_model() below.

The output format is documented in llc.h. Tracr has no unembedding
parameter: its output is a fixed projection onto the output-space residual
dims, so the converter stores that projection as the fixed tensors
unembed/w (0/1) and unembed/b (zero). Everything else is trainable.

Only the Python 3 standard library is used (no numpy).
"""

import argparse
import ast
import json
import math
import os
import struct
import sys
import tempfile
import zipfile

MAGIC = b"LLCW"
VERSION_DENSE = 1     # every tensor stored dense
VERSION_SPARSE = 2    # a tensor may be stored as (index, value) pairs
ENCODING_DENSE = 0
ENCODING_SPARSE = 1
MAX_STRING = 65535
# Sparse indices are u32, so one tensor holds fewer than 2**32 values.
MAX_TENSOR_NUMEL = 2**32 - 1


class FormatError(Exception):
    """An input file is not what the converter expects."""


# ---------------------------------------------------------------------------
# Reading .npz / .npy without numpy

def parse_npy(data, name):
    """Parse one .npy v1/v2 file; return (shape, values as floats)."""
    if data[:6] != b"\x93NUMPY":
        raise FormatError(f"{name}: not an .npy file (bad magic)")
    major = data[6]
    if major == 1:
        header_len = struct.unpack_from("<H", data, 8)[0]
        start = 10
    elif major in (2, 3):
        header_len = struct.unpack_from("<I", data, 8)[0]
        start = 12
    else:
        raise FormatError(f"{name}: unsupported .npy version {major}")
    header = ast.literal_eval(data[start:start + header_len].decode("latin1"))
    descr = header["descr"]
    if header.get("fortran_order"):
        raise FormatError(f"{name}: Fortran-order arrays are not supported")
    shape = tuple(int(d) for d in header["shape"])
    numel = 1
    for d in shape:
        numel *= d
    fmt = {"<f4": "f", "<f8": "d"}.get(descr)
    if fmt is None:
        raise FormatError(f"{name}: dtype {descr!r} is not float32 or float64")
    body = data[start + header_len:]
    need = numel * struct.calcsize(fmt)
    if len(body) < need:
        raise FormatError(f"{name}: data has {len(body)} bytes, shape needs {need}")
    values = list(struct.unpack_from("<%d%s" % (numel, fmt), body))
    return shape, values


def read_npz(path):
    """Read every array of an .npz archive; return {key: (shape, values)}."""
    arrays = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for entry in archive.namelist():
                if not entry.endswith(".npy"):
                    continue
                key = entry[:-4]
                arrays[key] = parse_npy(archive.read(entry), f"{path}:{entry}")
    except zipfile.BadZipFile as err:
        raise FormatError(f"{path}: not a valid .npz archive ({err})") from None
    return arrays


# ---------------------------------------------------------------------------
# Writing LLCW

def python_str(value):
    """Format a JSON value the way Python's str() prints the Tracr value."""
    if isinstance(value, bool):
        return "True" if value else "False"
    if value is None:
        return "None"
    return str(value)


def to_float32(x):
    return struct.unpack("<f", struct.pack("<f", x))[0]


def _pack_string(text, what):
    raw = text.encode("utf-8")
    if len(raw) > MAX_STRING:
        raise FormatError(f"{what} is {len(raw)} bytes long; the format allows {MAX_STRING}")
    return struct.pack("<I", len(raw)) + raw


def _tensor_payload(values, numel, allow_sparse):
    """Encode one tensor; values is a flat list of floats or a {flat index: float} dict."""
    if isinstance(values, dict):
        items = sorted((i, to_float32(v)) for i, v in values.items() if to_float32(v) != 0.0)
        dense = None
    else:
        if len(values) != numel:
            raise FormatError(f"tensor has {len(values)} values, its shape needs {numel}")
        dense = values
        items = [(i, to_float32(v)) for i, v in enumerate(values) if to_float32(v) != 0.0]
    for _, v in items:
        if not math.isfinite(v):
            raise FormatError("tensor contains a NaN or infinite value")
    if allow_sparse and 4 + 8 * len(items) < 4 * numel:
        idx = [i for i, _ in items]
        val = [v for _, v in items]
        payload = (struct.pack("<I", len(items)) + struct.pack("<%dI" % len(idx), *idx)
                   + struct.pack("<%df" % len(val), *val))
        return ENCODING_SPARSE, payload
    if dense is None:
        dense = [0.0] * numel
        for i, v in items:
            dense[i] = v
    return ENCODING_DENSE, struct.pack("<%df" % numel, *dense)


def write_llcw(path, meta, tensors, sparse=True):
    """Write a model in the LLCW format, atomically (temporary file, then rename).

    meta: dict with n_layers, n_heads, d_model, d_head, d_mlp, max_seq_len,
      vocab (token string of each input id), bos_id, pad_id, categorical
      (bool), output_values (value string of each output id; numerical: the
      output's name), output_dims (residual dim of each output, or []),
      residual_labels (list of d_model strings, or []), causal (bool,
      optional) and extra (dict of metadata strings, optional).
    tensors: list of (name, shape, values, trainable), where values is a
      flat row-major list of floats or a {flat index: float} dict of the
      non-zero entries.
    sparse: store tensors as (index, value) pairs where that is smaller;
      the file is then version 2. With sparse=False it is version 1.
    """
    records = []
    any_sparse = False
    for name, shape, values, trainable in tensors:
        numel = 1
        for d in shape:
            numel *= d
        if numel > MAX_TENSOR_NUMEL:
            raise FormatError(f"tensor {name} has {numel} values; the format allows {MAX_TENSOR_NUMEL}")
        encoding, payload = _tensor_payload(values, numel, sparse)
        any_sparse |= encoding == ENCODING_SPARSE
        records.append((name, shape, 1 if trainable else 0, encoding, payload))
    version = VERSION_SPARSE if any_sparse else VERSION_DENSE

    extra = meta.get("extra", {})
    head = bytearray()
    head += MAGIC
    head += struct.pack("<I", version)
    head += struct.pack("<I", 1 if meta.get("causal") else 0)
    head += struct.pack("<6I", meta["n_layers"], meta["n_heads"], meta["d_model"],
                        meta["d_head"], meta["d_mlp"], meta["max_seq_len"])
    head += struct.pack("<3I", len(meta["vocab"]), meta["bos_id"], meta["pad_id"])
    head += struct.pack("<I", 0 if meta["categorical"] else 1)
    head += struct.pack("<I", len(meta["output_values"]))
    head += struct.pack("<I", len(meta["output_dims"]))
    head += struct.pack("<I", len(meta["residual_labels"]))
    head += struct.pack("<I", len(extra))
    head += struct.pack("<I", len(records))
    for token in meta["vocab"]:
        head += _pack_string(token, "vocab entry")
    for value in meta["output_values"]:
        head += _pack_string(value, "output value")
    for dim in meta["output_dims"]:
        head += struct.pack("<I", dim)
    for label in meta["residual_labels"]:
        head += _pack_string(label, "residual label")
    for key in sorted(extra):
        head += _pack_string(key, "metadata key")
        head += _pack_string(str(extra[key]), f"metadata value {key}")

    # The directory has a known size, so the data offsets follow from it.
    dir_size = 0
    for name, shape, _, _, _ in records:
        dir_size += 4 + len(name.encode("utf-8")) + 4 + 4 * len(shape) + 4
        dir_size += (4 if version == VERSION_SPARSE else 0) + 16
    offset = len(head) + dir_size
    directory = bytearray()
    for name, shape, trainable, encoding, payload in records:
        directory += _pack_string(name, "tensor name")
        directory += struct.pack("<I", len(shape))
        directory += struct.pack("<%dI" % len(shape), *shape)
        directory += struct.pack("<I", trainable)
        if version == VERSION_SPARSE:
            directory += struct.pack("<I", encoding)
        directory += struct.pack("<QQ", offset, len(payload))
        offset += len(payload)
    assert len(head) + len(directory) == len(head) + dir_size

    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".llcw-", dir=folder)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the usual mode
        with os.fdopen(fd, "wb") as out:
            out.write(head)
            out.write(directory)
            for record in records:
                out.write(record[4])
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return version


# ---------------------------------------------------------------------------
# Tracr npz + sidecar -> LLCW

def tensor_names(n_layers):
    """Return the Tracr parameter names in llc's canonical order."""
    names = ["token_embed/embeddings", "pos_embed/embeddings"]
    for layer in range(n_layers):
        prefix = f"transformer/layer_{layer}"
        for module in ("attn/query", "attn/key", "attn/value", "attn/linear",
                       "mlp/linear_1", "mlp/linear_2"):
            names.append(f"{prefix}/{module}/w")
            names.append(f"{prefix}/{module}/b")
    return names


def expected_shapes(meta):
    """Return {name: shape} for every Tracr parameter of a model with this config."""
    d, hk, m = meta["d_model"], meta["n_heads"] * meta["d_head"], meta["d_mlp"]
    shapes = {
        "token_embed/embeddings": (len(meta["vocab"]), d),
        "pos_embed/embeddings": (meta["max_seq_len"] + 1, d),
    }
    for layer in range(meta["n_layers"]):
        p = f"transformer/layer_{layer}"
        for module in ("query", "key", "value"):
            shapes[f"{p}/attn/{module}/w"] = (d, hk)
            shapes[f"{p}/attn/{module}/b"] = (hk,)
        shapes[f"{p}/attn/linear/w"] = (hk, d)
        shapes[f"{p}/attn/linear/b"] = (d,)
        shapes[f"{p}/mlp/linear_1/w"] = (d, m)
        shapes[f"{p}/mlp/linear_1/b"] = (m,)
        shapes[f"{p}/mlp/linear_2/w"] = (m, d)
        shapes[f"{p}/mlp/linear_2/b"] = (d,)
    return shapes


def meta_from_sidecar(side, path):
    """Build write_llcw's meta dict from a Tracr sidecar (the schema of NAME.json)."""
    try:
        cfg = side["model_config"]
        if cfg.get("layer_norm"):
            raise FormatError(f"{path}: models with layer norm are not supported")
        categorical = bool(side["categorical_output"])
        if categorical:
            output_values = [python_str(v) for v in side["output_id_to_value"]]
        else:
            output_values = [side.get("output_sop_label") or "output"]
        meta = {
            "n_layers": int(cfg["num_layers"]),
            "n_heads": int(cfg["num_heads"]),
            "d_model": int(side["residual_width"]),
            "d_head": int(cfg["key_size"]),
            "d_mlp": int(cfg["mlp_hidden_size"]),
            "max_seq_len": int(side["max_seq_len"]),
            "vocab": [python_str(t) for t in side["input_id_to_token"]],
            "bos_id": int(side["bos_id"]),
            "pad_id": int(side["pad_id"]),
            "categorical": categorical,
            "output_values": output_values,
            "output_dims": [int(i) for i in side["output_residual_indices"]],
            "residual_labels": list(side.get("residual_labels", [])),
            "causal": bool(side.get("causal", False) or cfg.get("causal", False)),
        }
    except KeyError as err:
        raise FormatError(f"{path}: sidecar is missing the field {err}") from None
    if len(meta["output_dims"]) != len(meta["output_values"]):
        raise FormatError(f"{path}: {len(meta['output_dims'])} output_residual_indices "
                          f"for {len(meta['output_values'])} output values")
    if any(not 0 <= i < meta["d_model"] for i in meta["output_dims"]):
        raise FormatError(f"{path}: an output_residual_index is outside 0..{meta['d_model'] - 1}")
    if meta["residual_labels"] and len(meta["residual_labels"]) != meta["d_model"]:
        raise FormatError(f"{path}: {len(meta['residual_labels'])} residual labels "
                          f"for residual width {meta['d_model']}")
    extra = {"source": "tracr"}
    for key in ("program", "program_source", "tracr_commit", "compiler_bos",
                "compiler_pad", "mlp_exactness"):
        if key in side:
            extra[key] = python_str(side[key])
    meta["extra"] = extra
    return meta


def unembed_tensors(meta):
    """Return the fixed output projection onto the output-space residual dims."""
    d, n_out = meta["d_model"], len(meta["output_values"])
    proj = {}
    for j, dim in enumerate(meta["output_dims"]):
        proj[dim * n_out + j] = 1.0
    return [("unembed/w", (d, n_out), proj, False),
            ("unembed/b", (n_out,), {}, False)]


def convert(npz_path, json_path, out_path, sparse=True):
    """Convert NAME.npz + NAME.json to an LLCW file; return the version written."""
    if not os.path.isfile(npz_path):
        raise FormatError(f"{npz_path}: not found, or not a file (give the .npz saved from the Tracr model)")
    try:
        with open(json_path, encoding="utf-8") as f:
            side = json.load(f)
    except OSError as err:
        raise FormatError(f"{json_path}: cannot read the sidecar ({err.strerror})") from None
    except json.JSONDecodeError as err:
        raise FormatError(f"{json_path}: invalid JSON ({err})") from None
    meta = meta_from_sidecar(side, json_path)
    try:
        arrays = read_npz(npz_path)
    except OSError as err:
        raise FormatError(f"{npz_path}: cannot read ({err.strerror})") from None

    shapes = expected_shapes(meta)
    missing = [n for n in shapes if n not in arrays]
    if missing:
        raise FormatError(f"{npz_path}: missing parameter {missing[0]} "
                          f"({len(missing)} missing in all)")
    unknown = sorted(set(arrays) - set(shapes))
    if unknown:
        raise FormatError(f"{npz_path}: unexpected parameter {unknown[0]} "
                          "(layer norm and other extra modules are not supported)")
    tensors = []
    for name in tensor_names(meta["n_layers"]):
        shape, values = arrays[name]
        if tuple(shape) != shapes[name]:
            raise FormatError(f"{npz_path}: {name} has shape {list(shape)}, "
                              f"the sidecar's config needs {list(shapes[name])}")
        tensors.append((name, shape, values, True))
    tensors += unembed_tensors(meta)
    return write_llcw(out_path, meta, tensors, sparse=sparse)


# ---------------------------------------------------------------------------
# Live Tracr model -> NAME.npz + NAME.json (needs Tracr, hence numpy)

def export_tracr_model(model, program, out_prefix, max_seq_len, compiler_bos,
                       compiler_pad, program_name=None, program_source=None):
    """Write OUT_PREFIX.npz and OUT_PREFIX.json from a live Tracr model.

    model: the tracr.compiler.assemble.AssembledTransformerModel returned by
      tracr.compiler.compiling.compile_rasp_to_model(program, vocab,
      max_seq_len, compiler_bos=..., compiler_pad=...).
    program: the RASP program that was compiled (its label and encoding
      name the output space).
    The pair has the fields convert() reads; convert it with
    `python3 tracr_weights/convert.py OUT_PREFIX.npz -o OUT_PREFIX.llcw`.
    Requires numpy and Tracr; nothing else in this script does.
    """
    import numpy as np  # only this function needs numpy
    from tracr.rasp import rasp

    flat = {}
    for module, params in model.params.items():
        for pname, value in params.items():
            flat[f"{module}/{pname}"] = np.asarray(value, dtype=np.float32)
    np.savez(out_prefix + ".npz", **flat)

    in_map = model.input_encoder.encoding_map
    id_to_token = [None] * len(in_map)
    for token, idx in in_map.items():
        id_to_token[idx] = token
    labels = list(model.residual_labels)
    out_label = program.label
    categorical = rasp.is_categorical(program)
    if categorical:
        out_map = model.output_encoder.encoding_map
        id_to_value = [None] * len(out_map)
        for value, idx in out_map.items():
            id_to_value[idx] = value
        out_labels = [f"{out_label}:{v}" for v in id_to_value]
    else:
        id_to_value = None
        out_labels = [out_label]
    out_indices = [labels.index(lab) for lab in out_labels]
    cfg = model.model_config

    def jsonable(v):
        return v if isinstance(v, (bool, int, float, str)) or v is None else str(v)

    side = {
        "program": program_name or out_label,
        "program_source": program_source or "",
        "vocab": sorted((jsonable(t) for t in in_map if t not in (compiler_bos, compiler_pad)),
                        key=str),
        "max_seq_len": max_seq_len,
        "compiler_bos": compiler_bos,
        "compiler_pad": compiler_pad,
        "causal": bool(cfg.causal),
        "input_encoding_map": {str(k): v for k, v in in_map.items()},
        "input_id_to_token": [jsonable(t) for t in id_to_token],
        "bos_id": in_map[compiler_bos],
        "pad_id": in_map[compiler_pad],
        "categorical_output": categorical,
        "output_sop_label": out_label,
        "output_labels": out_labels,
        "output_residual_indices": out_indices,
        "output_id_to_value": None if id_to_value is None else [jsonable(v) for v in id_to_value],
        "model_config": {
            "num_heads": cfg.num_heads, "num_layers": cfg.num_layers,
            "key_size": cfg.key_size, "mlp_hidden_size": cfg.mlp_hidden_size,
            "layer_norm": bool(cfg.layer_norm), "causal": bool(cfg.causal),
            "dropout_rate": float(cfg.dropout_rate),
        },
        "residual_width": len(labels),
        "residual_labels": labels,
    }
    with open(out_prefix + ".json", "w", encoding="utf-8") as f:
        json.dump(side, f, indent=1)


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Convert a Tracr model (NAME.npz + NAME.json) to llc's LLCW weight format.")
    parser.add_argument("npz", help="Haiku parameters saved by numpy.savez (NAME.npz)")
    parser.add_argument("-o", "--output", required=True, help="output weight file (NAME.llcw)")
    parser.add_argument("--json", help="sidecar file (default: NAME.json beside the .npz)")
    parser.add_argument("--dense", action="store_true",
                        help="store every tensor dense (format version 1; larger files)")
    args = parser.parse_args(argv)
    json_path = args.json or os.path.splitext(args.npz)[0] + ".json"
    try:
        version = convert(args.npz, json_path, args.output, sparse=not args.dense)
    except FormatError as err:
        print(f"convert.py: {err}", file=sys.stderr)
        return 1
    except OSError as err:
        print(f"convert.py: cannot write {args.output}: {err.strerror}", file=sys.stderr)
        return 1
    print(f"wrote {args.output} (format version {version})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
