#!/usr/bin/env python3
"""Compile the nine Tracr library programs to transformer weights, without Tracr.

Usage:
    python3 tracr_weights/compile.py PROGRAM --max-seq-len N -o OUT.llcw [--bos bos] [--pad pad]
    python3 tracr_weights/compile.py PROGRAM --max-seq-len N --sizes [--json]
    python3 tracr_weights/compile.py --list

The weights equal, bit for bit after rounding to float32, those that
DeepMind's Tracr (github.com/google-deepmind/tracr, commit 9ce2b8c, version
1.0.0) compiles for the programs of its example notebook. The settings are
the notebook's: the vocabularies in PROGRAMS below, compiler_bos "bos",
compiler_pad "pad", causal False and mlp_exactness 100. Expression labels (`sort_1`, `map_7`, ...)
are numbered as in a fresh Python process running Tracr, because Tracr draws
them from a process-wide counter the first time a label is read.

The file follows the data: a small RASP (expressions and an evaluator), the
nine programs, then the compiler passes (labels and value sets, one block per
expression, layer allocation, residual stream, parameter placement), and the
command line. Every parameter is computed in float64, as Tracr does with
numpy, and rounded to float32 only when written or counted.

Only the Python 3 standard library is used (no numpy).
"""

import argparse
import bisect
import collections
import copy
import json
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from convert import (  # noqa: E402  (the import needs the path set above)
    MAX_TENSOR_NUMEL, FormatError, expected_shapes, python_str, tensor_names,
    to_float32, unembed_tensors, write_llcw)

# Tracr hard-codes the inverse temperature of every compiled attention head.
SOFTMAX_COLDNESS = 100.0
DEFAULT_MLP_EXACTNESS = 100
# Default maximum of total parameters for a written model. llc loads every
# parameter densely, and 1e9 parameters take 4 GB as float32.
DEFAULT_MAX_PARAMS = 10**9

EXIT_FAILURE = 1
EXIT_USAGE = 2


class CompileError(Exception):
    """A program cannot be compiled (unsupported construct or invalid setting)."""


# ---------------------------------------------------------------------------
# RASP expressions
#
# The subset of RASP that Tracr compiles. Expression objects are compared by
# identity: SOp overloads ==, <, & and so on to build new expressions, as RASP
# does, so code here never uses `in` or == on expressions.

CATEGORICAL = "categorical"
NUMERICAL = "numerical"


class RASPExpr:
    default_name = "expr"

    def __init__(self):
        self._name = None

    @property
    def name(self):
        return self._name if self._name is not None else self.default_name

    @property
    def children(self):
        return []

    def named(self, name):
        """Return a copy with the given name. The program must use the copy."""
        new = copy.copy(self)
        new._name = name
        return new


class SOp(RASPExpr):
    """A sequence operation: maps an input sequence to a sequence of values."""

    default_name = "sop"
    __hash__ = object.__hash__

    def __init__(self):
        super().__init__()
        self.encoding = CATEGORICAL

    # Comparisons and arithmetic with a constant build a Map, and with another
    # SOp a SequenceMap, exactly as RASP's operator overloads do.
    def __lt__(self, other):
        return Map(lambda x: x < other, self)

    def __le__(self, other):
        return Map(lambda x: x <= other, self)

    def __eq__(self, other):
        return Map(lambda x: x == other, self)

    def __ne__(self, other):
        return Map(lambda x: x != other, self)

    def __gt__(self, other):
        return Map(lambda x: x > other, self)

    def __ge__(self, other):
        return Map(lambda x: x >= other, self)

    def __add__(self, other):
        if isinstance(other, SOp):
            return SequenceMap(lambda x, y: x + y, self, other)
        return Map(lambda x: x + other, self)

    def __radd__(self, other):
        return Map(lambda x: other + x, self)

    def __sub__(self, other):
        if isinstance(other, SOp):
            return SequenceMap(lambda x, y: x - y, self, other)
        return Map(lambda x: x - other, self)

    def __rsub__(self, other):
        return Map(lambda x: other - x, self)

    def __mul__(self, other):
        if isinstance(other, SOp):
            return SequenceMap(lambda x, y: x * y, self, other)
        return Map(lambda x: x * other, self)

    def __rmul__(self, other):
        return Map(lambda x: other * x, self)

    def __truediv__(self, other):
        if isinstance(other, SOp):
            return SequenceMap(lambda x, y: x / y, self, other)
        return Map(lambda x: x / other, self)

    def __rtruediv__(self, other):
        return Map(lambda x: other / x, self)

    def __invert__(self):
        return Map(lambda x: not x, self)

    def __and__(self, other):
        if isinstance(other, SOp):
            return SequenceMap(lambda x, y: x and y, self, other)
        return Map(lambda x: x and other, self)

    def __or__(self, other):
        if isinstance(other, SOp):
            return SequenceMap(lambda x, y: x or y, self, other)
        return Map(lambda x: x or other, self)

    def __rand__(self, other):
        return Map(lambda x: other and x, self)

    def __ror__(self, other):
        return Map(lambda x: x or other, self)


class TokensType(SOp):
    default_name = "tokens"


class IndicesType(SOp):
    default_name = "indices"


tokens = TokensType()
indices = IndicesType()


class Map(SOp):
    """Apply f to every element of inner.

    A Map of a Map is fused into one Map at construction, as RASP does, so
    the inner Map gets no label and no block of its own.
    """

    default_name = "map"

    def __init__(self, f, inner, simplify=True):
        super().__init__()
        if simplify and isinstance(inner, Map):
            inner_f = inner.f
            self.f = lambda x: f(inner_f(x))
            self.inner = inner.inner
        else:
            self.f = f
            self.inner = inner

    @property
    def children(self):
        return [self.inner]


class SequenceMap(SOp):
    """Apply f(x, y) elementwise to two SOps."""

    default_name = "sequence_map"

    def __init__(self, f, fst, snd):
        super().__init__()
        self.f = f
        self.fst = fst
        self.snd = snd

    @property
    def children(self):
        return [self.fst, self.snd]


class LinearSequenceMap(SequenceMap):
    """fst_fac * x + snd_fac * y, evaluated in that order in float64."""

    default_name = "linear_sequence_map"

    def __init__(self, fst, snd, fst_fac, snd_fac):
        super().__init__(lambda x, y: fst_fac * x + snd_fac * y, fst, snd)
        self.fst_fac = fst_fac
        self.snd_fac = snd_fac


class Comparison:
    """A Select predicate, called as predicate(key, query) as in RASP."""

    def __init__(self, name, function):
        self.name = name
        self.function = function

    def __call__(self, key, query):
        if key is None or query is None:
            raise ValueError(f"{self.name} comparison received None "
                             f"(key {key!r}, query {query!r})")
        return self.function(key, query)

    def __repr__(self):
        return f"Comparison.{self.name}"


Comparison.EQ = Comparison("EQ", lambda key, query: key == query)
Comparison.LT = Comparison("LT", lambda key, query: key < query)
Comparison.LEQ = Comparison("LEQ", lambda key, query: key <= query)
Comparison.GT = Comparison("GT", lambda key, query: key > query)
Comparison.GEQ = Comparison("GEQ", lambda key, query: key >= query)
Comparison.NEQ = Comparison("NEQ", lambda key, query: key != query)
Comparison.TRUE = Comparison("TRUE", lambda key, query: True)
Comparison.FALSE = Comparison("FALSE", lambda key, query: False)


class Select(RASPExpr):
    """Selector: query position i selects key position j when predicate(keys[j], queries[i])."""

    default_name = "select"

    def __init__(self, keys, queries, predicate):
        super().__init__()
        self.keys = keys
        self.queries = queries
        self.predicate = predicate

    @property
    def children(self):
        return [self.keys, self.queries]


class Aggregate(SOp):
    """Mean of sop over the selected positions, or default where none is selected."""

    default_name = "aggregate"

    def __init__(self, selector, sop, default=None):
        super().__init__()
        self.selector = selector
        self.sop = sop
        self.default = default

    @property
    def children(self):
        return [self.selector, self.sop]


class SelectorWidth(SOp):
    """Number of key positions each query position selects."""

    default_name = "selector_width"

    def __init__(self, selector):
        super().__init__()
        self.selector = selector

    @property
    def children(self):
        return [self.selector]


def numerical(sop):
    """Return a copy of sop stored as one real-valued residual direction."""
    new = copy.copy(sop)
    new.encoding = NUMERICAL
    return new


def categorical(sop):
    """Return a copy of sop stored one-hot, one residual direction per value."""
    new = copy.copy(sop)
    new.encoding = CATEGORICAL
    return new


# ---------------------------------------------------------------------------
# RASP evaluator
#
# Reproduces the values of Tracr's reference evaluator, types included: an
# Aggregate that selects exactly one position returns that value unchanged
# (a bool stays a bool), several positions give their arithmetic mean, none
# gives the default (None for a categorical Aggregate). Maps and SequenceMaps
# pass None through without calling f.

def evaluate(expr, input_tokens):
    """Evaluate a RASP expression on a list of tokens (without BOS)."""
    cache = {}

    def run(node):
        key = id(node)
        if key not in cache:
            cache[key] = evaluate_node(node, input_tokens, run)
        return cache[key]

    return run(expr)


def _mean(values, default):
    if not values:
        return default
    if len(values) == 1:
        return values[0]
    if all(isinstance(v, (int, float, bool)) for v in values):
        return sum(values) / len(values)
    raise ValueError(f"cannot average non-numeric values {values!r}")


def evaluate_node(node, input_tokens, run):
    if isinstance(node, TokensType):
        return list(input_tokens)
    if isinstance(node, IndicesType):
        return list(range(len(input_tokens)))
    if isinstance(node, Map):
        return [None if x is None else node.f(x) for x in run(node.inner)]
    if isinstance(node, SequenceMap):
        pairs = zip(run(node.fst), run(node.snd))
        return [None if x is None or y is None else node.f(x, y) for x, y in pairs]
    if isinstance(node, Select):
        keys, queries = run(node.keys), run(node.queries)
        return [[bool(node.predicate(k, q)) for k in keys] for q in queries]
    if isinstance(node, SelectorWidth):
        return [sum(row) for row in run(node.selector)]
    if isinstance(node, Aggregate):
        rows, values = run(node.selector), run(node.sop)
        return [_mean([v for s, v in zip(row, values) if s], node.default) for row in rows]
    raise CompileError(f"cannot evaluate expression of type {type(node).__name__}")


# ---------------------------------------------------------------------------
# The nine programs
#
# Written as in tracr/compiler/lib.py at the commit above: the same
# expressions, names, child order and sharing, because labels and the
# residual order depend on all of them.

def make_length():
    all_true_selector = Select(tokens, tokens, Comparison.TRUE).named("all_true_selector")
    return SelectorWidth(all_true_selector).named("length")


def make_frac_prevs(bools):
    bools = numerical(bools)
    prevs = Select(indices, indices, Comparison.LEQ)
    return numerical(Aggregate(prevs, bools, default=0)).named("frac_prevs")


def make_pair_balance(sop, open_token, close_token):
    bools_open = numerical(sop == open_token).named("bools_open")
    opens = numerical(make_frac_prevs(bools_open)).named("opens")
    bools_close = numerical(sop == close_token).named("bools_close")
    closes = numerical(make_frac_prevs(bools_close)).named("closes")
    pair_balance = numerical(LinearSequenceMap(opens, closes, 1, -1))
    return pair_balance.named("pair_balance")


def make_shuffle_dyck(pairs):
    # Tracr's lib builds `length` once at import and shares it. A fresh copy
    # per program gives the same labels and weights for a single compile.
    length = make_length()
    balances = []
    for pair in pairs:
        open_token, close_token = pair
        balance = make_pair_balance(tokens, open_token, close_token).named(f"balance_{pair}")
        balances.append(balance)

    any_negative = balances[0] < 0
    for balance in balances[1:]:
        any_negative = any_negative | (balance < 0)
    any_negative = numerical(Map(lambda x: x, any_negative)).named("any_negative")

    select_all = Select(indices, indices, Comparison.TRUE).named("select_all")
    has_neg = numerical(Aggregate(select_all, any_negative, default=0)).named("has_neg")

    all_zero = balances[0] == 0
    for balance in balances[1:]:
        all_zero = all_zero & (balance == 0)

    select_last = Select(indices, length - 1, Comparison.EQ).named("select_last")
    last_zero = Aggregate(select_last, all_zero).named("last_zero")
    not_has_neg = (~has_neg).named("not_has_neg")
    return (last_zero & not_has_neg).named("shuffle_dyck")


def make_shuffle_dyck2():
    return make_shuffle_dyck(["()", "{}"]).named("shuffle_dyck2")


def make_hist():
    same_tok = Select(tokens, tokens, Comparison.EQ).named("same_tok")
    return SelectorWidth(same_tok).named("hist")


def make_sort_unique(vals, keys):
    smaller = Select(keys, keys, Comparison.LT).named("smaller")
    target_pos = SelectorWidth(smaller).named("target_pos")
    sel_new = Select(target_pos, indices, Comparison.EQ)
    return Aggregate(sel_new, vals).named("sort")


def make_sort(vals, keys, max_seq_len, min_key):
    # Adding min_key * i / max_seq_len makes equal keys distinct and keeps
    # their order. The product is taken before the division, as in Tracr.
    keys = SequenceMap(lambda x, i: x + min_key * i / max_seq_len, keys, indices)
    return make_sort_unique(vals, keys)


def make_sort_freq(max_seq_len):
    hist = -1 * make_hist().named("hist")
    return make_sort(tokens, hist, max_seq_len=max_seq_len, min_key=1).named("sort_freq")


Program = collections.namedtuple("Program", "build vocab source")

# build(max_seq_len) returns the output expression. vocab is listed sorted.
# source is the Tracr call that builds the same program (N = max_seq_len).
PROGRAMS = {
    "length": Program(
        lambda n: make_length(), ["a", "b", "c", "d"],
        "tracr.compiler.lib.make_length()"),
    "frac_prevs": Program(
        lambda n: make_frac_prevs((tokens == "x").named("is_x")), ["a", "b", "c", "x"],
        'tracr.compiler.lib.make_frac_prevs((rasp.tokens == "x").named("is_x"))'),
    "sort": Program(
        lambda n: make_sort(tokens, tokens, max_seq_len=n, min_key=1), [1, 2, 3, 4, 5],
        "tracr.compiler.lib.make_sort(rasp.tokens, rasp.tokens, max_seq_len=N, min_key=1)"),
    "sort_unique": Program(
        lambda n: make_sort_unique(tokens, tokens), [1, 2, 3, 4, 5],
        "tracr.compiler.lib.make_sort_unique(rasp.tokens, rasp.tokens)"),
    "hist": Program(
        lambda n: make_hist(), ["a", "b", "c", "d"],
        "tracr.compiler.lib.make_hist()"),
    "sort_freq": Program(
        lambda n: make_sort_freq(max_seq_len=n), ["a", "b", "c", "d"],
        "tracr.compiler.lib.make_sort_freq(max_seq_len=N)"),
    "pair_balance": Program(
        lambda n: make_pair_balance(tokens, "(", ")"), ["(", ")"],
        'tracr.compiler.lib.make_pair_balance(sop=rasp.tokens, open_token="(", close_token=")")'),
    "dyck-2": Program(
        lambda n: make_shuffle_dyck2(), ["(", ")", "{", "}"],
        "tracr.compiler.lib.make_shuffle_dyck2()"),
    "dyck-3": Program(
        lambda n: make_shuffle_dyck(["()", "{}", "[]"]), ["(", ")", "[", "]", "{", "}"],
        'tracr.compiler.lib.make_shuffle_dyck(pairs=["()", "{}", "[]"])'),
}

# Every program compiles for max_seq_len >= 1, and its model agrees with RASP
# on every input for N = 1, 2 and 3 (tests/test_compile.py). N = 0 leaves no
# positions, and sort and sort_freq divide by N.
MIN_MAX_SEQ_LEN = 1


# ---------------------------------------------------------------------------
# Labels, value sets and basis directions

class Direction:
    """A basis direction of the residual stream or of a hidden layer.

    value is None for numerical SOps and auxiliary directions such as `one`.
    Directions sort by (name, value) as Python tuples. Where that comparison
    raises TypeError (an int token against the string BOS), they sort by their
    printed labels instead. This is the order of Tracr's BasisDirection.
    """

    __slots__ = ("name", "value", "_hash")

    def __init__(self, name, value=None):
        self.name = name
        self.value = value
        self._hash = hash((name, value))

    def __eq__(self, other):
        return self.name == other.name and self.value == other.value

    def __hash__(self):
        return self._hash

    def __lt__(self, other):
        try:
            return (self.name, self.value) < (other.name, other.value)
        except TypeError:
            return str(self) < str(other)

    def __str__(self):
        # Python's str() prints floats as the shortest round-trip repr.
        if self.value is None:
            return str(self.name)
        return f"{self.name}:{self.value}"

    __repr__ = __str__


ONE = Direction("one")


def sorted_space(directions):
    """Return the deduplicated directions in residual order."""
    return sorted(set(directions))


class Graph:
    """The program's expressions with labels, value sets and basis directions.

    Labels are assigned breadth-first from the output (id 1), examining each
    expression's children in declaration order. tokens and indices have fixed
    labels and take no id. `order` is that discovery order, which Tracr also
    uses to order the heads of a layer.
    """

    def __init__(self, output, vocab, max_seq_len):
        self.output = output
        self.max_seq_len = max_seq_len
        self.labels = {}
        self.order = []
        self._label_breadth_first(output)
        self.value_sets = {}
        for expr in self.order:
            self.value_set(expr, vocab)

    def _label_breadth_first(self, output):
        next_id = 1

        def discover(expr):
            nonlocal next_id
            if isinstance(expr, (TokensType, IndicesType)):
                self.labels[id(expr)] = expr.default_name
            else:
                self.labels[id(expr)] = f"{expr.name}_{next_id}"
                next_id += 1
            self.order.append(expr)

        discover(output)
        queue = collections.deque([output])
        while queue:
            expr = queue.popleft()
            for child in expr.children:
                if id(child) not in self.labels:
                    discover(child)
                    queue.append(child)

    def label(self, expr):
        return self.labels[id(expr)]

    def value_set(self, expr, vocab):
        """Compute the set of values expr can take, from its children's sets."""
        key = id(expr)
        if key in self.value_sets:
            return self.value_sets[key]
        if isinstance(expr, Select):
            for child in expr.children:
                self.value_set(child, vocab)
            self.value_sets[key] = None
            return None
        values = self._compute_value_set(expr, vocab)
        self.value_sets[key] = values
        return values

    def _compute_value_set(self, expr, vocab):
        n = self.max_seq_len
        if isinstance(expr, TokensType):
            return set(vocab)
        if isinstance(expr, IndicesType):
            return set(range(n))
        if isinstance(expr, SelectorWidth):
            self.value_set(expr.selector, vocab)
            return set(range(0, n + 1))
        if isinstance(expr, Map):
            out = set()
            for x in self.value_set(expr.inner, vocab):
                result = call_ignoring_arithmetic_errors(expr.f, x)
                if result is not None:
                    out.add(result)
            return out
        if isinstance(expr, SequenceMap):
            fst = self.value_set(expr.fst, vocab)
            snd = self.value_set(expr.snd, vocab)
            out = set()
            for x in fst:
                for y in snd:
                    result = call_ignoring_arithmetic_errors(expr.f, x, y)
                    if result is not None:
                        out.add(result)
            return out
        if isinstance(expr, Aggregate):
            self.value_set(expr.selector, vocab)
            inner = self.value_set(expr.sop, vocab)
            if expr.encoding == CATEGORICAL:
                return inner
            # A numerical Aggregate is compiled as a mean of 0/1 values. Tracr
            # lists only v / n for single values v and widths n, so means such
            # as 2/3 are missing, which only numerical MLPs downstream notice.
            # int() truncates, so this check accepts any value in [0, 2), as
            # Tracr's does.
            if not {int(x) for x in inner} <= {0, 1}:
                raise CompileError(
                    f"numerical Aggregate {self.label(expr)} averages values "
                    f"{sorted(inner)!r}, but only 0/1 values can be averaged")
            out = set()
            for value in inner:
                for width in range(1, n + 1):
                    out.add(value / width)
            return out
        raise CompileError(f"expression {expr.name} of type {type(expr).__name__} "
                           "is not supported")

    def directions(self, expr):
        """Return the sorted basis directions of an SOp."""
        label = self.label(expr)
        if expr.encoding == NUMERICAL:
            return [Direction(label)]
        return sorted_space(Direction(label, v) for v in self.value_sets[id(expr)])


def call_ignoring_arithmetic_errors(f, *args):
    # Tracr drops values whose computation raises ArithmeticError (such as
    # division by zero), assuming those inputs never occur.
    try:
        return f(*args)
    except ArithmeticError:
        return None


# ---------------------------------------------------------------------------
# Blocks: attention heads and MLPs on named directions
#
# Each block acts on sorted lists of Directions. Attention heads keep W_QK as
# a rule (predicate and spaces) because the selector-width head of sort_freq
# at max_seq_len 100 has 10^8 entries. MLP weights are dicts of entries.

class AttentionHead:
    """One head: W_QK from the query space to the key space, W_OV from values to outputs.

    W_QK[one, bos] = C * bos_share, so the BOS key scores C * bos_share at
    every query. Other entries that touch `one` or BOS are 0, and the rest
    are C * predicate(key value, query value). The keys are one-hot, so
    selected keys score C and unselected keys 0, before the 1/sqrt(d_head)
    scaling of the forward pass.
    """

    def __init__(self, label, query_space, key_space, value_space, output_space,
                 predicate, bos, bos_share, ov):
        self.label = label
        self.query_space = query_space
        self.key_space = key_space
        self.value_space = value_space
        self.output_space = output_space
        self.predicate = predicate
        self.bos = bos
        self.bos_score = SOFTMAX_COLDNESS * bos_share
        self.ov = ov

    def residual_directions(self):
        return self.query_space + self.key_space + self.value_space + self.output_space

    def _plain(self, space):
        return [(i, d) for i, d in enumerate(space) if d != ONE and d != self.bos]

    def qk_entries(self):
        """Yield (query index, key index, value) for every non-zero W_QK entry."""
        q_one = self.query_space.index(ONE)
        k_bos = self.key_space.index(self.bos)
        if self.bos_score != 0:
            yield q_one, k_bos, self.bos_score
        keys = self._plain(self.key_space)
        for qi, q in self._plain(self.query_space):
            for ki, k in keys:
                score = SOFTMAX_COLDNESS * self.predicate(k.value, q.value)
                if score != 0:
                    yield qi, ki, score

    def count_qk_nonzero(self):
        """Count the W_QK entries that are non-zero in float32 without building them."""
        count = 1 if to_float32(self.bos_score) != 0 else 0
        keys = [k.value for _, k in self._plain(self.key_space)]
        queries = [q.value for _, q in self._plain(self.query_space)]
        return count + count_selected_pairs(self.predicate, keys, queries)


def count_selected_pairs(predicate, keys, queries):
    """Count (key, query) pairs whose score C * predicate(key, query) is non-zero in float32.

    The eight Comparisons are counted from sorted keys in O((|K| + |Q|) log |K|).
    Other predicates, or keys that do not sort, are evaluated pair by pair.
    """
    fast = {"TRUE", "FALSE", "EQ", "NEQ", "LT", "LEQ", "GT", "GEQ"}
    name = predicate.name if isinstance(predicate, Comparison) else None
    if name in fast:
        try:
            ordered = sorted(keys)
        except TypeError:
            ordered = None
        if ordered is not None:
            n_keys = len(ordered)
            if name == "TRUE":
                return n_keys * len(queries)
            if name == "FALSE":
                return 0
            if name in ("EQ", "NEQ"):
                key_set = set(keys)
                equal = sum(1 for q in queries if q in key_set)
                return equal if name == "EQ" else n_keys * len(queries) - equal
            total = 0
            for q in queries:
                if name == "LT":
                    total += bisect.bisect_left(ordered, q)
                elif name == "LEQ":
                    total += bisect.bisect_right(ordered, q)
                elif name == "GT":
                    total += n_keys - bisect.bisect_right(ordered, q)
                else:
                    total += n_keys - bisect.bisect_left(ordered, q)
            return total
    total = 0
    for q in queries:
        for k in keys:
            if to_float32(SOFTMAX_COLDNESS * predicate(k, q)) != 0:
                total += 1
    return total


def categorical_attention(label, query_dirs, key_dirs, value_dirs, output_dirs,
                          predicate, bos, always_attend_to_bos):
    """Build the head of an Aggregate (BOS only as a fallback) or of a SelectorWidth.

    With always_attend_to_bos False (Aggregate), BOS scores C/2, so it wins
    only where no key is selected, and its value row is zero: the output is
    then the zero vector. With True (SelectorWidth), BOS scores C, ties with
    every selected key, and its value is copied to the output.
    """
    query_space = sorted_space(list(query_dirs) + [bos, ONE])
    key_space = sorted_space(list(key_dirs) + [bos])
    value_space = sorted_space(list(value_dirs) + [bos])
    if always_attend_to_bos:
        value_basis = value_space
    else:
        value_basis = [d for d in value_space if d != bos]
    if len(value_basis) != len(output_dirs):
        raise CompileError(f"head {label}: {len(value_basis)} value directions "
                           f"for {len(output_dirs)} output directions")
    ov = {}
    for value_dir, out_dir in zip(value_basis, output_dirs):
        if value_dir == bos and not always_attend_to_bos:
            continue
        ov[(value_dir, out_dir)] = 1.0
    bos_share = 1.0 if always_attend_to_bos else 0.5
    return AttentionHead(label, query_space, key_space, value_space, list(output_dirs),
                         predicate, bos, bos_share, ov)


class MLP:
    """A ReLU MLP: W1 from input to hidden directions, W2 from hidden to output directions.

    w1 and w2 map (row direction, column direction) to a float64 value.
    """

    def __init__(self, input_space, hidden_space, output_space, w1, w2):
        self.input_space = input_space
        self.hidden_space = hidden_space
        self.output_space = output_space
        self.w1 = w1
        self.w2 = w2

    def residual_directions(self):
        return self.input_space + self.output_space


def combine_mlps(mlps):
    """Merge MLPs that run in parallel into one, summing entries that coincide.

    Hidden units of different blocks interleave in direction order. Only the
    shared `_hidden_clean_bos_` unit of two SelectorWidths could coincide.
    """
    w1, w2 = {}, {}
    for mlp in mlps:
        for key, value in mlp.w1.items():
            w1[key] = w1.get(key, 0.0) + value
        for key, value in mlp.w2.items():
            w2[key] = w2.get(key, 0.0) + value
    return MLP(sorted_space(d for m in mlps for d in m.input_space),
               sorted_space(d for m in mlps for d in m.hidden_space),
               sorted_space(d for m in mlps for d in m.output_space), w1, w2)


def map_categorical_mlp(input_dirs, output_dirs, f, output_label):
    """Categorical to categorical Map: the hidden layer is the output one-hot itself."""
    outputs = set(output_dirs)
    w1 = {}
    for d in input_dirs:
        target = Direction(output_label, f(d.value))
        if target in outputs:
            w1[(d, target)] = 1.0
    w2 = {(d, d): 1.0 for d in output_dirs}
    return MLP(list(input_dirs), list(output_dirs), list(output_dirs), w1, w2)


def map_categorical_to_numerical_mlp(input_dirs, output_dir, f):
    """Categorical to numerical Map: one hidden unit that sums f(value) over the one-hot input.

    The ReLU passes only non-negative f, and the nine programs use 0/1 values.
    """
    w1 = {(d, output_dir): f(d.value) * 1.0 for d in input_dirs}
    return MLP(list(input_dirs), [output_dir], [output_dir], w1, {(output_dir, output_dir): 1.0})


def discretising_mlp(input_dir, input_values, f, output_dirs, hidden_name, large_number):
    """Numerical input to categorical (or numerical) output by thresholds between known inputs.

    Sorted inputs x_0 < ... < x_{n-1} get thresholds t_k = (x_{k-1} + x_k) / 2.
    Per threshold two units, (k, 0) = relu(L (x - t_k) + 1) and
    (k, 1) = relu(L (x - t_k)). Their difference steps from 0 to 1 over
    [t_k - 1/L, t_k]. The output is f(x_0) plus, per step, f(x_k) - f(x_{k-1}).
    output_dirs is one numerical direction or the categorical output basis.
    """
    points = []
    for x in sorted(input_values):
        result = call_ignoring_arithmetic_errors(f, x)
        if result is not None:
            points.append((x, result))
    start = Direction(f"{hidden_name}start")
    hidden = [start]
    w1 = {(ONE, start): 1.0}
    for k in range(1, len(points)):
        threshold = (points[k - 1][0] + points[k][0]) / 2
        unit0 = Direction(hidden_name, (k, 0))
        unit1 = Direction(hidden_name, (k, 1))
        hidden += [unit0, unit1]
        w1[(ONE, unit0)] = 1 - large_number * threshold
        w1[(ONE, unit1)] = -(large_number * threshold)
        w1[(input_dir, unit0)] = float(large_number)
        w1[(input_dir, unit1)] = float(large_number)

    w2 = {}
    numerical_output = len(output_dirs) == 1 and output_dirs[0].value is None
    if numerical_output:
        out = output_dirs[0]
        w2[(start, out)] = points[0][1] * 1.0
        for k in range(1, len(points)):
            step = points[k][1] - points[k - 1][1]
            w2[(Direction(hidden_name, (k, 0)), out)] = 1 * step * 1.0
            w2[(Direction(hidden_name, (k, 1)), out)] = -1 * step * 1.0
    else:
        by_value = {d.value: d for d in output_dirs}
        missing = [r for _, r in points if r not in by_value]
        if missing:
            raise CompileError(f"{hidden_name}: value {missing[0]!r} has no output direction")
        w2[(start, by_value[points[0][1]])] = 1.0
        for k in range(1, len(points)):
            for unit, sign in ((Direction(hidden_name, (k, 0)), 1.0),
                               (Direction(hidden_name, (k, 1)), -1.0)):
                # sign * (e(f(x_k)) - e(f(x_{k-1}))): zero where both values agree.
                new, old = by_value[points[k][1]], by_value[points[k - 1][1]]
                w2[(unit, new)] = w2.get((unit, new), 0.0) + sign
                w2[(unit, old)] = w2.get((unit, old), 0.0) - sign
    return MLP(sorted_space([input_dir, ONE]), sorted_space(hidden), list(output_dirs), w1, w2)


def sequence_map_mlp(fst_dirs, snd_dirs, output_dirs, f, output_label, hidden_name):
    """Categorical SequenceMap: one hidden unit per input pair, relu(x_u + y_v - 1) = x_u AND y_v."""
    if set(fst_dirs) & set(snd_dirs):
        raise CompileError(f"{output_label}: the two SequenceMap inputs share directions")
    outputs = set(output_dirs)
    w1, w2, hidden = {}, {}, []
    for x in fst_dirs:
        for y in snd_dirs:
            unit = Direction(hidden_name, (x.name, x.value, y.name, y.value))
            hidden.append(unit)
            w1[(x, unit)] = 1.0
            w1[(y, unit)] = 1.0
            w1[(ONE, unit)] = -1.0
            target = Direction(output_label, f(x.value, y.value))
            if target in outputs:
                w2[(unit, target)] = 1.0
    return MLP(sorted_space(list(fst_dirs) + list(snd_dirs) + [ONE]), sorted_space(hidden),
               list(output_dirs), w1, w2)


def linear_sequence_map_mlp(x_dir, y_dir, output_dir, x_factor, y_factor, hidden_name):
    """a*x + b*y exactly, as a*(relu(x) - relu(-x)) + b*(relu(y) - relu(-y))."""
    x_pos, x_neg = Direction(f"{hidden_name}x", 1), Direction(f"{hidden_name}x", -1)
    y_pos, y_neg = Direction(f"{hidden_name}y", 1), Direction(f"{hidden_name}y", -1)
    w1 = {}
    for source, pos, neg in ((x_dir, x_pos, x_neg), (y_dir, y_pos, y_neg)):
        w1[(source, pos)] = w1.get((source, pos), 0.0) + 1.0
        w1[(source, neg)] = w1.get((source, neg), 0.0) - 1.0
    w2 = {}
    for unit, factor in ((x_pos, x_factor), (x_neg, x_factor), (y_pos, y_factor), (y_neg, y_factor)):
        w2[(unit, output_dir)] = factor * unit.value * 1.0
    return MLP(sorted_space([x_dir, y_dir]), sorted_space([x_pos, x_neg, y_pos, y_neg]),
               [output_dir], w1, w2)


class SelectorWidthBlock:
    """A head that writes 1/(w+1) into a scratch direction, then an MLP that decodes w.

    The head attends to BOS and the w selected keys with equal weight and
    copies BOS's indicator, so the scratch direction receives 1/(w+1). The MLP
    discretises it with f(x) = round(1/x - 1). A `_hidden_clean_bos_` unit,
    active only at BOS, subtracts what both halves wrote at the BOS position.
    """

    def __init__(self, head, mlp):
        self.head = head
        self.mlp = mlp


def selector_width_block(label, query_dirs, key_dirs, output_dirs, out_values, predicate,
                         bos, categorical_output, large_number):
    scratch = Direction(f"{label}_selector_width_attn_output")
    head = categorical_attention(label, query_dirs, key_dirs, [bos], [scratch], predicate, bos,
                                 always_attend_to_bos=True)
    widths = {1 / (w + 1) for w in out_values}
    decode = discretising_mlp(scratch, widths, lambda x: round((1 / x) - 1), output_dirs,
                              f"_hidden_{label}_", large_number)
    clean = Direction("_hidden_clean_bos_")
    clean_w2 = {(clean, scratch): -1.0}
    if categorical_output:
        zero = [d for d in output_dirs if d.value == 0][0]
        clean_w2[(clean, zero)] = -1.0
    clean_mlp = MLP([bos], [clean], sorted_space([scratch] + list(output_dirs)),
                    {(bos, clean): 1.0}, clean_w2)
    return SelectorWidthBlock(head, combine_mlps([decode, clean_mlp]))


def build_block(graph, expr, bos, large_number):
    """Return the block computing expr (a head, an MLP or a SelectorWidthBlock), or None."""
    label = graph.label(expr)
    if isinstance(expr, (TokensType, IndicesType, Select)):
        return None
    out_dirs = graph.directions(expr)

    if isinstance(expr, Map):
        inner = expr.inner
        in_dirs = graph.directions(inner)
        if inner.encoding == CATEGORICAL and expr.encoding == CATEGORICAL:
            return map_categorical_mlp(in_dirs, out_dirs, expr.f, label)
        if inner.encoding == CATEGORICAL:
            return map_categorical_to_numerical_mlp(in_dirs, out_dirs[0], expr.f)
        return discretising_mlp(in_dirs[0], graph.value_sets[id(inner)], expr.f, out_dirs,
                                f"_hidden_{label}_", large_number)

    if isinstance(expr, SequenceMap):
        fst_dirs, snd_dirs = graph.directions(expr.fst), graph.directions(expr.snd)
        if isinstance(expr, LinearSequenceMap):
            encodings = {expr.fst.encoding, expr.snd.encoding, expr.encoding}
            if encodings != {NUMERICAL}:
                raise CompileError(f"{label}: a LinearSequenceMap needs numerical inputs and output")
            return linear_sequence_map_mlp(fst_dirs[0], snd_dirs[0], out_dirs[0],
                                           expr.fst_fac, expr.snd_fac, f"_hidden_{label}_")
        encodings = {expr.fst.encoding, expr.snd.encoding, expr.encoding}
        if encodings != {CATEGORICAL}:
            raise CompileError(f"{label}: a SequenceMap needs categorical inputs and output")
        if fst_dirs == snd_dirs:
            # Both arguments are the same SOp: Tracr compiles f(x, x) as a Map.
            return map_categorical_mlp(fst_dirs, out_dirs, lambda x: expr.f(x, x), label)
        return sequence_map_mlp(fst_dirs, snd_dirs, out_dirs, expr.f, label, f"_hidden_{label}_")

    if isinstance(expr, (Aggregate, SelectorWidth)):
        selector = expr.selector
        if not isinstance(selector, Select):
            raise CompileError(f"{label}: only a plain Select can be compiled as a selector")
        if selector.keys.encoding != CATEGORICAL or selector.queries.encoding != CATEGORICAL:
            raise CompileError(f"{label}: selector keys and queries must be categorical")
        key_dirs = graph.directions(selector.keys)
        query_dirs = graph.directions(selector.queries)

        if isinstance(expr, SelectorWidth):
            return selector_width_block(label, query_dirs, key_dirs, out_dirs,
                                        graph.value_sets[id(expr)], selector.predicate, bos,
                                        expr.encoding == CATEGORICAL, large_number)

        if expr.sop.encoding != expr.encoding:
            raise CompileError(f"{label}: an Aggregate's encoding must match its input's")
        if expr.encoding == CATEGORICAL and expr.default is not None:
            raise CompileError(f"{label}: a categorical Aggregate needs default None")
        if expr.encoding == NUMERICAL and expr.default != 0:
            raise CompileError(f"{label}: a numerical Aggregate needs default 0")
        return categorical_attention(label, query_dirs, key_dirs, graph.directions(expr.sop),
                                     out_dirs, selector.predicate, bos, always_attend_to_bos=False)

    raise CompileError(f"expression {label} of type {type(expr).__name__} is not supported")


# ---------------------------------------------------------------------------
# Layer allocation
#
# A block's depth is the longest path from tokens/indices counting SOps only
# (a Select adds nothing). Depth d puts heads in layer d-1's attention and
# MLPs in layer d-1's MLP, and a SelectorWidth puts its head and MLP in both.
# Where one depth contains only heads and the next only MLPs, the two share
# a layer. Empty half-layers are skipped when names are given out.

def compute_depths(graph):
    depths = {}

    def depth(expr):
        key = id(expr)
        if key not in depths:
            children = expr.children
            if not children:
                depths[key] = 0
            elif isinstance(expr, Select):
                depths[key] = max(depth(c) for c in children)
            else:
                depths[key] = 1 + max(depth(c) for c in children)
        return depths[key]

    for expr in graph.order:
        depth(expr)
    return depths


def allocate_layers(graph, blocks):
    """Return [(module name, block)] where a block is a list of heads or one merged MLP."""
    depths = compute_depths(graph)
    nodes = [e for e in graph.order if blocks[id(e)] is not None]
    depth_of = {id(e): depths[id(e)] for e in nodes}
    by_depth = collections.defaultdict(list)
    for e in nodes:
        by_depth[depth_of[id(e)]].append(e)

    def only_heads(level):
        return all(isinstance(blocks[id(e)], AttentionHead) for e in level)

    def only_mlps(level):
        return all(isinstance(blocks[id(e)], MLP) for e in level)

    # Condense: heads at depth d followed by MLPs only at d+1 share one layer,
    # so every deeper node moves up by one. A merged level is not re-examined.
    depth, max_depth = min(by_depth), max(by_depth)
    while depth < max_depth:
        if only_heads(by_depth[depth]) and only_mlps(by_depth[depth + 1]):
            for level in range(depth + 1, max_depth + 1):
                for e in by_depth[level]:
                    depth_of[id(e)] = level - 1
                by_depth[level - 1].extend(by_depth[level])
                by_depth[level] = []
            max_depth -= 1
        depth += 1

    # Half-layer 2(d-1) is attention and 2(d-1)+1 is MLP. The sort is stable,
    # so heads of one layer keep breadth-first discovery order.
    half_layers = collections.defaultdict(list)
    for e in sorted(nodes, key=lambda e: depth_of[id(e)]):
        base = 2 * (depth_of[id(e)] - 1)
        block = blocks[id(e)]
        if isinstance(block, SelectorWidthBlock):
            half_layers[base].append(block.head)
            half_layers[base + 1].append(block.mlp)
        elif isinstance(block, MLP):
            half_layers[base + 1].append(block)
        else:
            half_layers[base].append(block)

    modules = []
    for index in sorted(half_layers):
        if index % 2 == 0:
            modules.append(("attn", half_layers[index]))
        else:
            modules.append(("mlp", combine_mlps(half_layers[index])))

    # Each non-empty half-layer takes the next free slot of its type in
    # layer_0/attn, layer_0/mlp, layer_1/attn, ...
    named = []
    slot = 0
    for kind, block in modules:
        if (slot % 2 == 0) != (kind == "attn"):
            slot += 1
        named.append((f"transformer/layer_{slot // 2}/{kind}", block))
        slot += 1
    return named


# ---------------------------------------------------------------------------
# Assembly: residual stream, configuration and parameter tensors

class CompiledModel:
    """A compiled program: residual directions, layer blocks and configuration.

    Tensors are built on request (tensors()), and sizes() counts parameters
    without building the attention score matrices.
    """

    def __init__(self, program, max_seq_len, vocab, bos, pad, mlp_exactness):
        self.program = program
        self.max_seq_len = max_seq_len
        self.bos, self.pad = bos, pad
        self.mlp_exactness = mlp_exactness
        if bos in vocab or pad in vocab:
            raise CompileError(f"BOS {bos!r} and PAD {pad!r} must not be vocabulary tokens")
        if bos == pad:
            raise CompileError(f"BOS and PAD must differ (both are {bos!r})")

        output = PROGRAMS[program].build(max_seq_len)
        graph = Graph(output, vocab, max_seq_len)
        bos_dir = Direction("tokens", bos)
        blocks = {id(e): build_block(graph, e, bos_dir, mlp_exactness) for e in graph.order}
        self.layers = allocate_layers(graph, blocks)
        self.output_label = graph.label(output)
        self.categorical = output.encoding == CATEGORICAL
        self.output_space = graph.directions(output)

        # An input id is the rank of its token's direction in direction order.
        self.token_space = sorted_space(Direction("tokens", t) for t in list(vocab) + [bos, pad])
        index_space = [Direction("indices", i) for i in range(max_seq_len)]
        residual = set(self.token_space) | set(index_space) | set(self.output_space)
        for _, block in self.layers:
            for part in (block if isinstance(block, list) else [block]):
                residual.update(part.residual_directions())
        self.residual = sorted(residual)
        self.position = {d: i for i, d in enumerate(self.residual)}

        heads = [h for _, block in self.layers if isinstance(block, list) for h in block]
        mlps = [block for _, block in self.layers if isinstance(block, MLP)]
        self.n_layers = int(self.layers[-1][0].split("/")[1].split("_")[1]) + 1
        self.n_heads = max((len(b) for _, b in self.layers if isinstance(b, list)), default=1)
        self.d_head = max((max(len(h.query_space), len(h.key_space)) for h in heads), default=1)
        self.d_mlp = max((len(m.hidden_space) for m in mlps), default=1)
        self.d_model = len(self.residual)
        for head in heads:
            if len(head.output_space) > self.d_head:
                raise CompileError(f"head {head.label} writes {len(head.output_space)} values, "
                                   f"more than the key size {self.d_head}")

    # -- metadata --------------------------------------------------------

    def meta(self):
        """Return the meta dict of write_llcw (see convert.py)."""
        if self.categorical:
            output_values = [python_str(d.value) for d in self.output_space]
        else:
            output_values = [self.output_label]
        source = PROGRAMS[self.program].source
        return {
            "n_layers": self.n_layers, "n_heads": self.n_heads, "d_model": self.d_model,
            "d_head": self.d_head, "d_mlp": self.d_mlp, "max_seq_len": self.max_seq_len,
            "vocab": [python_str(d.value) for d in self.token_space],
            "bos_id": self.token_space.index(Direction("tokens", self.bos)),
            "pad_id": self.token_space.index(Direction("tokens", self.pad)),
            "categorical": self.categorical,
            "output_values": output_values,
            "output_dims": [self.position[d] for d in self.output_space],
            "residual_labels": [str(d) for d in self.residual],
            "causal": False,
            "extra": {"program": self.program, "program_source": source,
                      "compiler_bos": self.bos, "compiler_pad": self.pad,
                      "mlp_exactness": str(self.mlp_exactness), "source": "compile.py"},
        }

    def tensor_shapes(self):
        return expected_shapes(self.meta())

    # -- sizes -----------------------------------------------------------

    def sizes(self):
        """Count parameters and float32 non-zeros of the Tracr tensors (no unembedding)."""
        shapes = self.tensor_shapes()
        counts = {"embed": 0, "attn": 0, "mlp": 0}
        for name, shape in shapes.items():
            counts[parameter_group(name)] += math.prod(shape)
        nonzero = {"embed": 0, "attn": 0, "mlp": 0}
        for entries in self._embedding_entries().values():
            nonzero["embed"] += count_nonzero(entries.values())
        for _, block in self.layers:
            if isinstance(block, list):
                for head in block:
                    nonzero["attn"] += (head.count_qk_nonzero() + len(head.key_space)
                                        + count_nonzero(head.ov.values())
                                        + len(head.output_space))
            else:
                nonzero["mlp"] += count_nonzero(block.w1.values()) + count_nonzero(block.w2.values())
        largest = max(math.prod(s) for s in shapes.values())
        total = sum(counts.values())
        return {
            "program": self.program, "max_seq_len": self.max_seq_len,
            "d_model": self.d_model, "n_layers": self.n_layers, "n_heads": self.n_heads,
            "d_head": self.d_head, "d_mlp": self.d_mlp,
            "total_params": total, "nonzero_params": sum(nonzero.values()),
            "float32_bytes": 4 * total, "largest_tensor": largest,
            "embed_params": counts["embed"], "embed_nonzero": nonzero["embed"],
            "attn_params": counts["attn"], "attn_nonzero": nonzero["attn"],
            "mlp_params": counts["mlp"], "mlp_nonzero": nonzero["mlp"],
        }

    # -- tensors ---------------------------------------------------------

    def _embedding_entries(self):
        d = self.d_model
        token = {}
        for i, direction in enumerate(self.token_space):
            token[i * d + self.position[direction]] = 1.0
            if ONE in self.position:
                token[i * d + self.position[ONE]] = 1.0
        # Row 0 (the BOS position) has no index direction, and row p is index p - 1.
        pos = {}
        for p in range(1, self.max_seq_len + 1):
            pos[p * d + self.position[Direction("indices", p - 1)]] = 1.0
        return {"token_embed/embeddings": token, "pos_embed/embeddings": pos}

    def tensors(self):
        """Return [(name, shape, {flat index: value}, trainable)] in llc's order, unembedding last."""
        shapes = self.tensor_shapes()
        entries = {name: {} for name in shapes}
        entries.update(self._embedding_entries())
        for module, block in self.layers:
            if isinstance(block, list):
                self._place_heads(module, block, entries)
            else:
                self._place_mlp(module, block, entries)
        tensors = [(name, shapes[name], entries[name], True)
                   for name in tensor_names(self.n_layers)]
        return tensors + unembed_tensors(self.meta())

    def _place_heads(self, module, heads, entries):
        width = self.n_heads * self.d_head
        pos = self.position
        query, key = entries[f"{module}/query/w"], entries[f"{module}/key/w"]
        value, linear = entries[f"{module}/value/w"], entries[f"{module}/linear/w"]
        for j, head in enumerate(heads):
            column = j * self.d_head
            for qi, ki, score in head.qk_entries():
                query[pos[head.query_space[qi]] * width + column + ki] = score
            for ki, direction in enumerate(head.key_space):
                key[pos[direction] * width + column + ki] = 1.0
            out_index = {d: c for c, d in enumerate(head.output_space)}
            for (value_dir, out_dir), weight in head.ov.items():
                value[pos[value_dir] * width + column + out_index[out_dir]] = weight
            for c, direction in enumerate(head.output_space):
                linear[(column + c) * self.d_model + pos[direction]] = 1.0

    def _place_mlp(self, module, mlp, entries):
        pos = self.position
        hidden = {d: u for u, d in enumerate(mlp.hidden_space)}
        first, second = entries[f"{module}/linear_1/w"], entries[f"{module}/linear_2/w"]
        for (in_dir, unit), weight in mlp.w1.items():
            first[pos[in_dir] * self.d_mlp + hidden[unit]] = weight
        for (unit, out_dir), weight in mlp.w2.items():
            second[hidden[unit] * self.d_model + pos[out_dir]] = weight


def parameter_group(name):
    """Return "embed", "attn" or "mlp" for a Tracr parameter name."""
    if name.endswith("embed/embeddings"):
        return "embed"
    if "/attn/" in name:
        return "attn"
    return "mlp"


def count_nonzero(values):
    return sum(1 for v in values if to_float32(v) != 0)


def compile_program(program, max_seq_len, bos="bos", pad="pad",
                    mlp_exactness=DEFAULT_MLP_EXACTNESS):
    """Compile one of PROGRAMS, raising CompileError on invalid settings."""
    if program not in PROGRAMS:
        raise CompileError(f"unknown program {program!r}")
    if max_seq_len < MIN_MAX_SEQ_LEN:
        raise CompileError(f"max_seq_len must be at least {MIN_MAX_SEQ_LEN}, got {max_seq_len}")
    return CompiledModel(program, max_seq_len, PROGRAMS[program].vocab, bos, pad, mlp_exactness)


def program_sizes(program, max_seq_len, bos="bos", pad="pad",
                  mlp_exactness=DEFAULT_MLP_EXACTNESS):
    """Return the size dict of sizes() for a program, without building weight tensors."""
    return compile_program(program, max_seq_len, bos, pad, mlp_exactness).sizes()


# ---------------------------------------------------------------------------
# Command line

def list_programs():
    lines = []
    for name, spec in PROGRAMS.items():
        output = spec.build(5)
        kind = "numerical" if output.encoding == NUMERICAL else "categorical"
        vocab = " ".join(str(t) for t in spec.vocab)
        lines.append(f"{name:<13} vocab: {vocab:<12} output: {kind}")
    return "\n".join(lines)


def format_count(n):
    return f"{n:,}"


def oversize_message(sizes, max_params):
    """Return a message if the model is too large to write, else None."""
    where = f"{sizes['program']} at max_seq_len {sizes['max_seq_len']}"
    total = sizes["total_params"]
    gigabytes = sizes["float32_bytes"] / 1e9
    if total > max_params:
        return (f"{where} has {format_count(total)} parameters ({gigabytes:.1f} GB as float32), "
                f"more than --max-params {format_count(int(max_params))}. "
                "Use --sizes to print its sizes, or raise --max-params")
    if sizes["largest_tensor"] > MAX_TENSOR_NUMEL:
        return (f"{where} has a tensor of {format_count(sizes['largest_tensor'])} values, "
                f"but the LLCW format allows at most {format_count(MAX_TENSOR_NUMEL)} "
                "per tensor")
    return None


def check_output_path(path):
    """Return a message if path cannot be written, else None."""
    if os.path.isdir(path):
        return f"output path {path} is a directory: give a file name such as {path}/model.llcw"
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        return f"cannot write {path}: folder {folder} does not exist, so create it first"
    if not os.access(folder, os.W_OK):
        return f"cannot write {path}: folder {folder} is not writable, so choose another -o path"
    return None


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="compile.py",
        description="Compile a Tracr library program to LLCW weights, bit-identical to Tracr.")
    parser.add_argument("program", nargs="?", help="program name (see --list)")
    parser.add_argument("--max-seq-len", help="maximum input length N without BOS (at least 1)")
    parser.add_argument("-o", "--output", help="LLCW file to write")
    parser.add_argument("--bos", default="bos", help="BOS token name (default: bos)")
    parser.add_argument("--pad", default="pad", help="PAD token name (default: pad)")
    parser.add_argument("--mlp-exactness", type=int, default=DEFAULT_MLP_EXACTNESS,
                        help="slope L of the discretising MLPs (default: 100, Tracr's default)")
    parser.add_argument("--max-params", type=float, default=DEFAULT_MAX_PARAMS,
                        help="reject writing a model with more total parameters than this "
                             "(default: 1e9, which is 4 GB as dense float32)")
    parser.add_argument("--list", action="store_true", help="list the programs and exit")
    parser.add_argument("--sizes", action="store_true",
                        help="print sizes and parameter counts instead of writing weights")
    parser.add_argument("--json", action="store_true", help="with --sizes, print JSON")
    return parser.parse_args(argv)


def usage_error(message):
    print(f"compile.py: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.list:
        print(list_programs())
        return 0
    names = ", ".join(PROGRAMS)
    if args.program is None:
        return usage_error(f"missing PROGRAM: choose one of {names}")
    if args.program not in PROGRAMS:
        return usage_error(f"unknown program {args.program!r}: choose one of {names} "
                           "(see --list)")
    if args.max_seq_len is None:
        return usage_error("missing --max-seq-len N")
    try:
        max_seq_len = int(args.max_seq_len)
    except ValueError:
        return usage_error(f"invalid --max-seq-len {args.max_seq_len!r}: give an integer "
                           f"of at least {MIN_MAX_SEQ_LEN}")
    if max_seq_len < MIN_MAX_SEQ_LEN:
        return usage_error(f"invalid --max-seq-len {max_seq_len}: {args.program} needs "
                           f"at least {MIN_MAX_SEQ_LEN}")
    # LLCW stores tokens as printed strings, so BOS and PAD must also print
    # differently from every vocabulary token (the string "3" against sort's 3).
    printed_vocab = {python_str(t) for t in PROGRAMS[args.program].vocab}
    for option, token in (("--bos", args.bos), ("--pad", args.pad)):
        if token in printed_vocab:
            return usage_error(f"invalid {option} {token!r}: it is a vocabulary token of "
                               f"{args.program}, so choose another name")
    if args.bos == args.pad:
        return usage_error(f"invalid --pad {args.pad!r}: it equals --bos, so choose another name")
    if not (math.isfinite(args.max_params) and args.max_params > 0):
        return usage_error(f"invalid --max-params {args.max_params}: give a positive number "
                           "such as 1e9")
    if args.mlp_exactness < 1:
        return usage_error(f"invalid --mlp-exactness {args.mlp_exactness}: "
                           "give a positive integer")
    if not args.sizes and args.output is None:
        return usage_error("missing -o OUT.llcw (or use --sizes to print sizes only)")
    if args.json and not args.sizes:
        return usage_error("--json only applies to --sizes")
    if not args.sizes:
        problem = check_output_path(args.output)
        if problem:
            print(f"compile.py: {problem}", file=sys.stderr)
            return EXIT_FAILURE
        # pos_embed alone has (N + 1) * d_model >= (N + 1) * N parameters, so
        # a huge N is rejected before its value sets are even built.
        lower_bound = (max_seq_len + 1) * max_seq_len
        if lower_bound > args.max_params:
            print(f"compile.py: {args.program} at max_seq_len {max_seq_len} has more than "
                  f"{format_count(lower_bound)} parameters (over {4 * lower_bound / 1e9:.1f} GB "
                  f"as float32), more than --max-params {format_count(int(args.max_params))}. "
                  "Choose a smaller --max-seq-len or raise --max-params", file=sys.stderr)
            return EXIT_FAILURE

    try:
        model = compile_program(args.program, max_seq_len, args.bos, args.pad, args.mlp_exactness)
        sizes = model.sizes()
    except CompileError as err:
        print(f"compile.py: cannot compile {args.program}: {err}", file=sys.stderr)
        return EXIT_USAGE

    if args.sizes:
        if args.json:
            print(json.dumps(sizes))
        else:
            print(" ".join(f"{k}={v}" for k, v in sizes.items()))
        return 0

    problem = oversize_message(sizes, args.max_params)
    if problem:
        print(f"compile.py: {problem}", file=sys.stderr)
        return EXIT_FAILURE
    try:
        write_llcw(args.output, model.meta(), model.tensors())
    except (OSError, FormatError) as err:
        print(f"compile.py: cannot write {args.output}: {err}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"wrote {args.output}: {args.program}, max_seq_len {max_seq_len}, "
          f"{format_count(sizes['total_params'])} parameters "
          f"({format_count(sizes['nonzero_params'])} non-zero)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
