#!/usr/bin/env python3
"""Malformed .llcw files for the loader tests and the fuzzer's seed corpus.

cases(data) derives from the bytes of a valid model (a shipped Tracr model)
every kind of broken file the loader must reject: truncation at each header
boundary, wrong magic and version, dimensions and counts that overflow,
tensor data outside the file, non-finite weights, oversized or invalid
strings, and inconsistent directories. Each case is (name, file bytes,
fragment of the expected error message).

Usage: python3 tests/malformed.py MODEL.llcw OUT_DIR
  writes OUT_DIR/NAME.llcw for every case.
"""

import math
import os
import struct
import sys

MAGIC = b"LLCW"
# The u32 fields of the fixed header after the magic, in file order (see llc.h).
FIELDS = ("version", "flags", "n_layers", "n_heads", "d_model", "d_head", "d_mlp", "max_seq_len",
          "n_vocab", "bos_id", "pad_id", "output_kind", "n_outputs", "n_output_dims",
          "n_residual_labels", "n_meta", "n_tensors")
U32_MAX = 0xFFFFFFFF
U64_MAX = 0xFFFFFFFFFFFFFFFF


class Tensor:
    def __init__(self, name, dims, trainable, encoding, data):
        self.name = name            # bytes
        self.dims = list(dims)
        self.trainable = trainable
        self.encoding = encoding    # 0 dense, 1 sparse
        self.data = data            # the bytes at the tensor's offset
        self.offset = None          # None: computed by build()
        self.n_bytes = None


class Model:
    """A parsed .llcw file whose fields can be changed and written back."""

    def __init__(self):
        self.header = {}
        self.vocab, self.output_values, self.residual_labels = [], [], []
        self.output_dims, self.meta, self.tensors = [], [], []
        self.boundaries = {}        # name -> byte offset where that part starts

    def copy(self):
        other = Model()
        other.header = dict(self.header)
        other.vocab, other.output_values = list(self.vocab), list(self.output_values)
        other.residual_labels, other.output_dims = list(self.residual_labels), list(self.output_dims)
        other.meta = list(self.meta)
        other.tensors = [Tensor(t.name, t.dims, t.trainable, t.encoding, t.data) for t in self.tensors]
        other.boundaries = dict(self.boundaries)
        return other

    def tensor(self, name):
        return next(t for t in self.tensors if t.name == name.encode())


def parse(data):
    model = Model()
    pos = 4

    def u32():
        nonlocal pos
        (value,) = struct.unpack_from("<I", data, pos)
        pos += 4
        return value

    def string():
        nonlocal pos
        n = u32()
        pos += n
        return data[pos - n:pos]

    assert data[:4] == MAGIC
    model.boundaries["magic"] = 0
    for field in FIELDS:
        model.boundaries[field] = pos
        model.header[field] = u32()
    h = model.header
    model.boundaries["vocab"] = pos
    model.vocab = [string() for _ in range(h["n_vocab"])]
    model.boundaries["output values"] = pos
    model.output_values = [string() for _ in range(h["n_outputs"])]
    model.boundaries["output dims"] = pos
    model.output_dims = [u32() for _ in range(h["n_output_dims"])]
    model.boundaries["residual labels"] = pos
    model.residual_labels = [string() for _ in range(h["n_residual_labels"])]
    model.boundaries["metadata"] = pos
    model.meta = [(string(), string()) for _ in range(h["n_meta"])]
    model.boundaries["directory"] = pos
    for _ in range(h["n_tensors"]):
        name = string()
        dims = [u32() for _ in range(u32())]
        trainable = u32()
        encoding = u32() if h["version"] == 2 else 0
        offset, n_bytes = struct.unpack_from("<QQ", data, pos)
        pos += 16
        model.tensors.append(Tensor(name, dims, trainable, encoding, data[offset:offset + n_bytes]))
    model.boundaries["data"] = pos
    return model


def pack_string(s):
    return struct.pack("<I", len(s)) + s


def build(model):
    """Serialise model; a tensor's offset and n_bytes follow its data unless set."""
    h = model.header
    version = h["version"]
    head = bytearray(MAGIC)
    for field in FIELDS:
        head += struct.pack("<I", h[field] & U32_MAX)
    for s in model.vocab + model.output_values:
        head += pack_string(s)
    head += b"".join(struct.pack("<I", d) for d in model.output_dims)
    for s in model.residual_labels:
        head += pack_string(s)
    for key, value in model.meta:
        head += pack_string(key) + pack_string(value)
    entry_sizes = [4 + len(t.name) + 4 + 4 * len(t.dims) + 4 + (4 if version == 2 else 0) + 16
                   for t in model.tensors]
    offset = len(head) + sum(entry_sizes)
    directory, blob = bytearray(), bytearray()
    for t in model.tensors:
        directory += pack_string(t.name) + struct.pack("<I", len(t.dims))
        directory += b"".join(struct.pack("<I", d & U32_MAX) for d in t.dims)
        directory += struct.pack("<I", t.trainable)
        if version == 2:
            directory += struct.pack("<I", t.encoding)
        t_offset = offset + len(blob) if t.offset is None else t.offset
        t_bytes = len(t.data) if t.n_bytes is None else t.n_bytes
        directory += struct.pack("<QQ", t_offset & U64_MAX, t_bytes & U64_MAX)
        blob += t.data
    return bytes(head + directory + blob)


def dense(values):
    return struct.pack(f"<{len(values)}f", *values)


def sparse(indices, values):
    return struct.pack("<I", len(indices)) + struct.pack(f"<{len(indices)}I", *indices) + \
        struct.pack(f"<{len(values)}f", *values)


def numel(t):
    return math.prod(t.dims)


def empty_model(base, **config):
    """A model with base's strings and the given config, every tensor sparse and all zero.

    It has no residual labels and no output dims, so any d_model fits.
    """
    model = base.copy()
    model.header.update(config)
    h = model.header
    h["version"], h["n_residual_labels"], h["n_output_dims"] = 2, 0, 0
    model.residual_labels, model.output_dims = [], []
    d, hk, m, n, v, o = (h["d_model"], h["n_heads"] * h["d_head"], h["d_mlp"], h["max_seq_len"],
                         h["n_vocab"], h["n_outputs"])
    shapes = [("token_embed/embeddings", [v, d]), ("pos_embed/embeddings", [n + 1, d])]
    for layer in range(h["n_layers"]):
        p = f"transformer/layer_{layer}/"
        shapes += [(p + "attn/query/w", [d, hk]), (p + "attn/query/b", [hk]),
                   (p + "attn/key/w", [d, hk]), (p + "attn/key/b", [hk]),
                   (p + "attn/value/w", [d, hk]), (p + "attn/value/b", [hk]),
                   (p + "attn/linear/w", [hk, d]), (p + "attn/linear/b", [d]),
                   (p + "mlp/linear_1/w", [d, m]), (p + "mlp/linear_1/b", [m]),
                   (p + "mlp/linear_2/w", [m, d]), (p + "mlp/linear_2/b", [d])]
    shapes += [("unembed/w", [d, o]), ("unembed/b", [o])]
    model.tensors = [Tensor(name.encode(), dims, 1, 1, sparse([], [])) for name, dims in shapes]
    h["n_tensors"] = len(model.tensors)
    return model


def patch_u32(data, offset, value):
    return data[:offset] + struct.pack("<I", value) + data[offset + 4:]


def cases(data):
    """Return [(name, bytes, expected message fragment)] derived from a valid model."""
    base = parse(data)
    b = base.boundaries
    out = []

    def add(name, payload, fragment):
        out.append((name, bytes(payload), fragment))

    def with_header(**fields):
        model = base.copy()
        model.header.update(fields)
        return build(model)

    # Truncation at every header boundary, and inside each later part.
    add("empty", b"", "truncated")
    add("truncated_in_magic", data[:3], "truncated")
    for field in FIELDS:
        add(f"truncated_before_{field}", data[:b[field]], "truncated")
    add("truncated_after_fixed_header", data[:b["vocab"]], "n_vocab is")
    add("truncated_in_vocab", data[:b["vocab"] + 5], "n_vocab is 7, but only 5 bytes")
    add("truncated_in_string", data[:b["directory"] - 3], "runs past the end of the file")
    add("truncated_before_output_values", data[:b["output values"]], "truncated")
    add("truncated_in_output_dims", data[:b["output dims"] + 6], "truncated")
    add("truncated_in_residual_labels", data[:b["residual labels"] + 10], "truncated")
    add("truncated_in_metadata", data[:b["metadata"] + 3], "truncated")
    add("truncated_in_directory", data[:b["directory"] + 40], "truncated")
    add("truncated_before_data", data[:b["data"]], "runs past the end of the file")
    add("truncated_in_data", data[:-1], "runs past the end of the file")

    # Magic and version.
    add("wrong_magic", b"LLCX" + data[4:], "bad magic")
    add("zip_file", b"PK\x03\x04" + data[4:], "bad magic")
    add("version_0", patch_u32(data, b["version"], 0), "version 0 is not supported")
    add("version_3", patch_u32(data, b["version"], 3), "version 3 is not supported")
    add("version_max", patch_u32(data, b["version"], U32_MAX), "is not supported")
    add("unknown_flags", patch_u32(data, b["flags"], 6), "unknown flags")

    # Dimensions and counts out of range or overflowing.
    add("n_layers_0", patch_u32(data, b["n_layers"], 0), "n_layers is 0")
    add("n_layers_max", patch_u32(data, b["n_layers"], U32_MAX), "n_layers is 4294967295")
    add("d_model_max", patch_u32(data, b["d_model"], U32_MAX), "d_model is 4294967295")
    add("n_vocab_huge_tiny_file", patch_u32(data[:b["vocab"] + 8], b["n_vocab"], 1 << 24),
        "n_vocab is 16777216, but only")
    add("heads_times_d_head", with_header(n_heads=1024, d_head=1 << 24), "n_heads * d_head")
    add("n_meta_over_limit", patch_u32(data, b["n_meta"], 1025), "n_meta is 1025")
    add("n_tensors_wrong", patch_u32(data, b["n_tensors"], base.header["n_tensors"] - 1),
        "n_tensors is")
    add("bos_id_out_of_range", patch_u32(data, b["bos_id"], base.header["n_vocab"]), "bos_id is")
    add("residual_labels_count", patch_u32(data, b["n_residual_labels"], 3),
        "n_residual_labels is 3")
    add("output_kind_2", patch_u32(data, b["output_kind"], 2), "output_kind is 2")
    add("numerical_two_outputs", with_header(output_kind=1), "a numerical output has n_outputs 1")
    add("output_dim_out_of_range", patch_u32(data, b["output dims"], base.header["d_model"]),
        "an output dim is")
    only_special = base.copy()
    only_special.header.update(n_vocab=2, bos_id=0, pad_id=1)
    only_special.vocab = [b"bos", b"pad"]
    add("vocab_only_bos_and_pad", build(only_special), "only BOS and PAD")
    # Tensor values past 2^32 (the product of two u32 dims) and past the arena limit.
    add("tensor_over_u32_values", build(empty_model(base, d_model=1 << 24, d_mlp=1 << 24)),
        "the format allows 4294967295")
    add("arena_over_limit", build(empty_model(base, n_layers=3, d_model=65536, d_mlp=65535)),
        "llc loads at most")
    model = base.copy()
    model.tensors[0].dims = [U32_MAX, U32_MAX]
    add("tensor_dims_max", build(model), "has shape [4294967295, 4294967295]")
    model = base.copy()
    model.tensors[0].dims = [1, 2, 3]
    add("tensor_ndim_3", build(model), "has 3 dimensions")

    # Tensor data outside the file or inside the header.
    for name, offset, n_bytes, fragment in (
            ("offset_past_end", len(data) + 100, None, "runs past the end of the file"),
            ("offset_max", U64_MAX, None, "runs past the end of the file"),
            ("n_bytes_max", None, U64_MAX, "runs past the end of the file"),
            ("n_bytes_past_end", None, len(data), "runs past the end of the file"),
            ("offset_in_header", 0, None, "inside the header")):
        model = base.copy()
        model.tensors[0].offset, model.tensors[0].n_bytes = offset, n_bytes
        add(name, build(model), fragment)

    # Non-finite weights, dense (a version 1 file) and sparse.
    for name, value in (("dense_nan", math.nan), ("dense_inf", math.inf)):
        model = empty_model(base)
        model.header["version"] = 1
        for t in model.tensors:
            t.encoding, t.data = 0, dense([0.0] * numel(t))
        t = model.tensor("transformer/layer_0/mlp/linear_1/b")
        t.data = dense([0.5] * (numel(t) - 1) + [value])
        add(name, build(model), "non-finite value")
    for name, value in (("sparse_nan", math.nan), ("sparse_minus_inf", -math.inf)):
        model = empty_model(base)
        model.tensor("token_embed/embeddings").data = sparse([1, 4], [1.0, value])
        add(name, build(model), "non-finite value")

    # Strings: oversized lengths, and bytes that are not clean UTF-8 text.
    first = b["vocab"]
    add("string_length_max", patch_u32(data, first, U32_MAX), "strings are at most 65535 bytes")
    add("string_length_65536", patch_u32(data, first, 65536), "strings are at most 65535 bytes")
    add("string_past_end", patch_u32(data, first, 60000), "runs past the end of the file")
    for name, token, fragment in (("vocab_nul_byte", b"a\x00b", "U+0000"),
                                  ("vocab_invalid_utf8", b"\xff\xfe", "not valid UTF-8"),
                                  ("vocab_overlong_utf8", b"\xc0\xaf", "not valid UTF-8"),
                                  ("vocab_surrogate", b"\xed\xa0\x80", "not valid UTF-8"),
                                  ("vocab_escape", b"\x1b[31m", "U+001B"),
                                  ("vocab_duplicate", base.vocab[1], "appears twice")):
        model = base.copy()
        model.vocab[0] = token
        add(name, build(model), fragment)
    model = base.copy()
    model.output_values[0] = model.output_values[1]
    add("output_value_duplicate", build(model), "appears twice")
    model = base.copy()
    model.meta[0] = (b"key\nwith newline", model.meta[0][1])
    add("metadata_key_newline", build(model), "U+000A")

    # The tensor directory.
    def edit_tensor(case, fragment, **changes):
        model = base.copy()
        for key, value in changes.items():
            setattr(model.tensors[0], key, value)
        add(case, build(model), fragment)

    edit_tensor("tensor_unknown_name", "unexpected tensor", name=b"token_embed/weights")
    edit_tensor("tensor_layer_leading_zero", "unexpected tensor",
                name=b"transformer/layer_00/attn/query/w")
    edit_tensor("tensor_layer_past_n_layers", "unexpected tensor",
                name=b"transformer/layer_99/attn/query/w")
    model = base.copy()
    model.tensors[1].name = model.tensors[0].name
    add("tensor_duplicate", build(model), "appears twice")
    edit_tensor("tensor_wrong_shape", "has shape", dims=[base.tensors[0].dims[0] + 1,
                                                          base.tensors[0].dims[1]])
    edit_tensor("trainable_flag_2", "trainable flag 2", trainable=2)
    edit_tensor("encoding_2", "encoding 2", encoding=2)
    sparse_t = next(i for i, t in enumerate(base.tensors) if t.encoding == 1 and len(t.data) > 12)
    t = base.tensors[sparse_t]
    nnz = struct.unpack_from("<I", t.data)[0]
    indices = list(struct.unpack_from(f"<{nnz}I", t.data, 4))
    values = list(struct.unpack_from(f"<{nnz}f", t.data, 4 + 4 * nnz))
    for name, payload, fragment in (
            ("sparse_count_over_numel", struct.pack("<I", numel(t) + 1) + t.data[4:], "entries but only"),
            ("sparse_count_mismatch", struct.pack("<I", nnz - 1) + t.data[4:], "data bytes"),
            ("sparse_not_increasing", sparse(indices[::-1], values), "indices must increase"),
            ("sparse_index_out_of_range", sparse(indices[:-1] + [numel(t)], values), "past the end"),
            ("sparse_no_count", b"", "has no count")):
        model = base.copy()
        model.tensors[sparse_t].data = payload
        add(name, build(model), fragment)
    model = base.copy()
    model.tensors[sparse_t].encoding = 0
    add("dense_size_mismatch", build(model), "data bytes; its shape")
    return out


def main():
    if len(sys.argv) != 3:
        print(__doc__.strip().split("\n\n")[-1], file=sys.stderr)
        return 2
    with open(sys.argv[1], "rb") as f:
        data = f.read()
    os.makedirs(sys.argv[2], exist_ok=True)
    for name, payload, _ in cases(data):
        with open(os.path.join(sys.argv[2], name + ".llcw"), "wb") as f:
            f.write(payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
