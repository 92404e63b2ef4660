"""Lower the onnx export's int64 requantization to int32 arithmetic that OpenVINO runs exactly.

Why: fcos-plugin-onnx's ``requantization: integer`` export is bit-exact under ONNX Runtime; it
computes fcos's ``sat(round_half_up(sum_i x_i * M_i / 2**n))`` with int64 tensors (``x`` an
int32 conv accumulator or int8/int16 codes, ``M`` a 31-bit multiplier, ``n`` up to 62).
OpenVINO's CPU plugin has no int64 arithmetic: it runs i64 as i32 (openvinotoolkit/openvino
issues #35823, #37766), so ``acc * M`` wraps and every requantized code is wrong (measured:
the first conv of a model differs by up to 127 steps on 58 % of its codes). Its int32
``Div``/``Mod`` are computed in float32 and are exact only below 2**24.

What OpenVINO runs exactly (measured on int32 tensors): ``ConvInteger``, ``Add``, ``Sub``,
``Mul`` (wrapping), ``BitwiseAnd``, a ``Div`` whose dividend is a multiple of the divisor with
at most 24 significant bits, and ``Clip`` where rounding its operand to float32 cannot change
the result (a clamp inside a fused chain may run in float32: the first version of this pass
clamped a 30-bit value against ``2**29 - 1``, which float32 rounds to ``2**29``, and the int16
code wrapped from 32767 to -32768 on 0.06 % of the demo head's codes). This pass rewrites every
requantization chain of the export into those ops, with base-``B = 2**15`` digits:

* ``x`` (the accumulator, plus its bias when ``|acc| + |bias| < 2**29``; else the bias joins
  the constant below) is split as ``x = x1 * B + x0`` (``x0 = x & 0x7fff``, ``x1 = (x - x0) /
  B``, ``|x1| <= 2**14``; the bound comes from the weights); 8/16-bit codes are one digit;
* per channel ``M' = M * 2**(N - n)``, with ``N`` the largest ``n`` rounded up to whole digits
  (``N = 15 j``: one shift for every channel, and the quotient needs no division), split into
  digits ``m_l < B``; the products ``x_a * m_l`` are below 2**30 and their digit sums below
  2**31 (checked from the bounds; else each product is normalised first);
* the constant ``sum bias * M' + 2**(N-1)`` (large biases, the rounding offset) is added as
  exact per-channel digits, and carries normalise the digits ``r_k`` to ``[0, B)`` (the top
  one signed);
* ``floor(V / 2**N) = sum_{k>=j} r_k B**(k-j)``, evaluated from the top digit with each partial
  value clamped to ``[-B, B]`` (a clamped value is out of the int16 range at every later step,
  so the saturation is unchanged and nothing overflows);
* the saturation (small bounds: exact even as a float32 clamp), the zero point and the cast to
  the storage type, as in the export.

The rewritten graph computes the same integers; ONNX Runtime runs it bit-exactly as well (the
tests check both runtimes against the fcos integer model).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs
import numpy as np

LOG_B = 15
B = 1 << LOG_B
#: the largest accumulator or code magnitude the digit arithmetic takes (|x1| <= 2**14)
MAX_ABS_X = 1 << 29
#: ONNX TensorProto element types used here
_INT32, _INT64 = 6, 7
_ARITH = frozenset({"Add", "Sub", "Mul", "Div", "Mod"})
#: |code| bound of 8/16-bit values by ONNX type (uint8 holds int8 codes + 128)
_CODE_BOUND = {2: 128, 3: 128, 5: 1 << 15}
#: digit sums must stay below this (int32), carries and constants included
_DIGIT_LIMIT = (1 << 31) - (1 << 18)


class LoweringError(ValueError):
    """The export holds an int64 computation this pass does not recognise (names the node)."""


@attrs.frozen
class _Term:
    source: str  # int8/uint8/int16 codes or the int32 accumulator
    zero_point: int  # subtracted after the cast to int32 (uint8-stored int8 codes: 128)
    bias: np.ndarray | None  # bias of an accumulator (int64, [1, C, 1, 1]): a constant term
    multiplier: np.ndarray  # int64, scalar or [1, C, 1, 1]
    bound: np.ndarray  # per channel (or scalar) bound of |x|


@attrs.frozen
class _Chain:
    terms: tuple[_Term, ...]
    shift: np.ndarray  # int64 n, scalar or [1, C, 1, 1]
    zero_point: int  # added to the saturated code (uint8 storage: 128)
    lo: int  # saturation bounds, codes (before the zero point)
    hi: int
    to: int  # ONNX element type of the stored value
    output: str
    last: Any  # the chain's final Cast node (new nodes go in its place)


class _Graph:
    """Index of a graph: producers, consumers, constants."""

    def __init__(self, model: Any) -> None:
        from onnx import numpy_helper

        g = model.graph
        self.producer = {o: n for n in g.node for o in n.output}
        self.consumers: dict[str, list[Any]] = {}
        for n in g.node:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)
        self.consts = {i.name: numpy_helper.to_array(i) for i in g.initializer}
        for n in g.node:
            if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
                self.consts[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)

    def only_consumer(self, name: str, op: str) -> Any:
        users = self.consumers.get(name, [])
        if len(users) != 1 or users[0].op_type != op:
            raise LoweringError(
                f"{name}: expected one {op} consumer, found {[u.op_type for u in users]}"
            )
        return users[0]

    def const(self, name: str) -> np.ndarray:
        if name not in self.consts:
            raise LoweringError(f"{name}: expected a constant")
        return self.consts[name]


def _scalar(g: _Graph, name: str) -> int:
    value = g.const(name)
    if value.size != 1:
        raise LoweringError(f"{name}: expected a scalar constant, got shape {value.shape}")
    return int(value.reshape(-1)[0])


def _attr(node: Any, name: str, default: Any = None) -> Any:
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _accumulator_bound(g: _Graph, conv: Any) -> np.ndarray:
    """Per output channel, ``max |x - x_zp| * sum |w - w_zp|`` of a ConvInteger."""
    x_zp = _scalar(g, conv.input[2]) if len(conv.input) > 2 and conv.input[2] else 0
    w = g.const(conv.input[1]).astype(np.int64)
    w_zp = (
        g.const(conv.input[3]).astype(np.int64)
        if len(conv.input) > 3 and conv.input[3]
        else np.zeros((), np.int64)
    )
    w_zp = w_zp.reshape(-1, 1, 1, 1) if w_zp.ndim == 1 else w_zp
    x_max = max(x_zp, 255 - x_zp)  # uint8 input
    per_c = np.abs(w - w_zp).reshape(w.shape[0], -1).sum(1) * x_max
    return per_c.reshape(1, -1, 1, 1)


def _term(g: _Graph, mul: Any, types: dict[str, int]) -> _Term:
    """``Mul(x64, M)`` with ``x64`` = ``Cast(s)``, ``Cast(s) - zp`` or ``Cast(acc) + bias``."""
    if mul.op_type != "Mul":
        raise LoweringError(f"{mul.name}: expected the multiplier's Mul, found {mul.op_type}")
    x64, m = mul.input
    multiplier = g.const(m).astype(np.int64)
    p = g.producer.get(x64)
    zp, bias = 0, None
    if p is not None and p.op_type in ("Sub", "Add") and p.input[1] in g.consts:
        value = g.const(p.input[1]).astype(np.int64)
        if p.op_type == "Sub":
            zp = int(value.reshape(-1)[0])
        else:
            bias = value
        p = g.producer.get(p.input[0])
    if p is None or p.op_type != "Cast" or _attr(p, "to") != _INT64:
        raise LoweringError(f"{mul.name}: its operand is not a Cast to int64 of a value")
    source = p.input[0]
    conv = g.producer.get(source)
    if conv is not None and conv.op_type == "ConvInteger":
        bound = _accumulator_bound(g, conv)
    elif types.get(source) in _CODE_BOUND:  # uint8 (zero point 128), int8, int16 codes
        bound = np.array(_CODE_BOUND[types[source]], np.int64)
    else:
        raise LoweringError(
            f"{mul.name}: source {source} is neither a ConvInteger accumulator nor 8/16-bit codes"
        )
    if int(np.max(bound)) >= MAX_ABS_X:
        raise LoweringError(
            f"{mul.name}: |accumulator| may reach {int(np.max(bound))}, beyond "
            f"the 2**29 the int32 digit arithmetic takes"
        )
    if int(np.min(multiplier)) < 0 or int(np.max(multiplier)) >= 1 << 31:
        raise LoweringError(f"{mul.name}: multiplier outside [0, 2**31)")
    return _Term(source=source, zero_point=zp, bias=bias, multiplier=multiplier, bound=bound)


def _match(g: _Graph, mod: Any, types: dict[str, int]) -> _Chain:
    """The requantization chain around one ``Mod`` of the export (``requant_codes``)."""
    t, div_name = mod.input
    add_t = g.producer.get(t)
    if add_t is None or add_t.op_type != "Add":
        raise LoweringError(f"{mod.name}: its dividend is not the rounding Add")
    v = add_t.input[0]
    div = g.const(div_name).astype(np.int64)
    shift = np.log2(div.astype(np.float64)).round().astype(np.int64)
    if not np.array_equal(np.left_shift(np.int64(1), shift), div):
        raise LoweringError(f"{mod.name}: divisor is not a power of two")
    sub = g.only_consumer(mod.output[0], "Sub")
    q = g.only_consumer(sub.output[0], "Div").output[0]
    nxt = g.consumers.get(q, [])
    zp = 0
    if len(nxt) == 1 and nxt[0].op_type == "Add":
        zp = _scalar(g, nxt[0].input[1])
        q = nxt[0].output[0]
    clip = g.only_consumer(q, "Clip")
    lo, hi = _scalar(g, clip.input[1]), _scalar(g, clip.input[2])
    cast = g.only_consumer(clip.output[0], "Cast")
    pv = g.producer.get(v)
    if pv is None:
        raise LoweringError(f"{mod.name}: no producer of {v}")
    if pv.op_type == "Add":
        muls = [g.producer.get(i) for i in pv.input]
        if any(m is None for m in muls):
            raise LoweringError(f"{pv.name}: a summand has no producer")
        terms = tuple(_term(g, m, types) for m in muls)
    else:
        terms = (_term(g, pv, types),)
    return _Chain(
        terms=terms,
        shift=shift,
        zero_point=zp,
        lo=lo - zp,
        hi=hi - zp,
        to=int(_attr(cast, "to")),
        output=cast.output[0],
        last=cast,
    )


class _Emitter:
    """New nodes and int32 constants with unique names."""

    def __init__(self, model: Any, prefix: str) -> None:
        self.taken = (
            {o for n in model.graph.node for o in n.output}
            | {i.name for i in model.graph.initializer}
            | {i.name for i in model.graph.input}
        )
        self.prefix = prefix
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self._consts: dict[tuple[bytes, tuple[int, ...]], str] = {}

    def name(self, base: str) -> str:
        n, k = f"{self.prefix}_{base}", 0
        while n in self.taken:
            k += 1
            n = f"{self.prefix}_{base}_{k}"
        self.taken.add(n)
        return n

    def const(self, base: str, value: Any) -> str:
        from onnx import numpy_helper

        arr = np.ascontiguousarray(np.asarray(value, dtype=np.int32))
        key = (arr.tobytes(), arr.shape)
        if key not in self._consts:
            name = self.name(base)
            self.inits.append(numpy_helper.from_array(arr, name))
            self._consts[key] = name
        return self._consts[key]

    def op(
        self, op: str, inputs: Sequence[str], base: str, out: str | None = None, **attrs: Any
    ) -> str:
        from onnx import helper

        out = out or self.name(base)
        self.nodes.append(
            helper.make_node(op, list(inputs), [out], name=self.name("n_" + base), **attrs)
        )
        return out

    # -- digit arithmetic ---------------------------------------------------------------

    def split(self, v: str, base: str) -> tuple[str, str]:
        """``(v & (B-1), floor(v / B))``: the low digit and the exact quotient (the dividend
        is a multiple of ``B``, at most 16 significant bits, exact even in float32)."""
        lo = self.op("BitwiseAnd", [v, self.const("mask15", B - 1)], base + "_lo")
        hi = self.op(
            "Div", [self.op("Sub", [v, lo], base + "_hi_b"), self.const("b15", B)], base + "_hi"
        )
        return lo, hi

    def add(self, a: str | None, b: str | None, base: str) -> str | None:
        if a is None or b is None:
            return a if b is None else b
        return self.op("Add", [a, b], base)

    def normalise(self, digits: list[str | None], base: str) -> list[str | None]:
        """Carry-propagate: digits ``[0, B)`` except the top one (signed)."""
        out: list[str | None] = []
        carry: str | None = None
        for k, d in enumerate(digits):
            v = self.add(d, carry, f"{base}_c{k}")
            if k == len(digits) - 1 or v is None:
                out.append(v)
                carry = None
                continue
            r, carry = self.split(v, f"{base}_d{k}")
            out.append(r)
        if carry is not None:
            raise AssertionError("the top digit takes the last carry")
        return out


def common_shift(shift: np.ndarray) -> int:
    """The chain's one shift: the largest ``n``, rounded up to whole digits (``15 j``), so the
    quotient ``floor(V / B**j)`` is the digits from ``j`` up and needs no division."""
    return -(-int(np.max(shift)) // LOG_B) * LOG_B


def _multiplier_digits(chain: _Chain, term: _Term) -> list[np.ndarray]:
    """Digits (base ``B``, int32 constants) of ``M * 2**(N - n)`` per channel."""
    n = np.broadcast_to(chain.shift, np.broadcast_shapes(chain.shift.shape, term.multiplier.shape))
    m = np.broadcast_to(term.multiplier, n.shape)
    big_n = common_shift(chain.shift)
    scaled = [int(mi) << (big_n - int(ni)) for mi, ni in zip(m.reshape(-1), n.reshape(-1))]
    count = max(1, max((s.bit_length() + LOG_B - 1) // LOG_B for s in scaled))
    return [
        np.array([(s >> (LOG_B * k)) & (B - 1) for s in scaled], np.int32).reshape(n.shape)
        for k in range(count)
    ]


def _bias_in_x(term: _Term) -> bool:
    """A bias is added to the int32 accumulator when ``|acc| + |bias| < 2**29`` (the common
    case); a larger one (int32 bias codes can reach 2**31) joins the chain's constant."""
    if term.bias is None:
        return False
    return int(np.max(term.bound + np.abs(term.bias))) < MAX_ABS_X


def _constant_digits(chain: _Chain, width: int) -> list[np.ndarray]:
    """Per channel, ``sum_t bias_t * M'_t + 2**(N-1)`` (the biases times their multipliers and
    the rounding offset: constants of the chain, exact Python integers) as ``width`` digits,
    ``[0, B)`` except the top one (signed)."""
    shapes = [chain.shift.shape] + [t.multiplier.shape for t in chain.terms]
    shapes += [t.bias.shape for t in chain.terms if t.bias is not None]
    shape = np.broadcast_shapes(*shapes)
    big_n = common_shift(chain.shift)
    n = np.broadcast_to(chain.shift, shape).reshape(-1)
    total = [1 << (big_n - 1)] * len(n)
    for t in chain.terms:
        if t.bias is None or _bias_in_x(t):
            continue
        m = np.broadcast_to(t.multiplier, shape).reshape(-1)
        bias = np.broadcast_to(t.bias, shape).reshape(-1)
        for c in range(len(n)):
            total[c] += int(bias[c]) * (int(m[c]) << (big_n - int(n[c])))
    digits = [[(v >> (LOG_B * k)) & (B - 1) for v in total] for k in range(width - 1)]
    digits.append([v >> (LOG_B * (width - 1)) for v in total])
    return [np.array(d, np.int64).reshape(shape) for d in digits]


def _constant_width(chain: _Chain) -> int:
    """Digits that hold the chain's constant with a top digit below ``B``."""
    big_n = common_shift(chain.shift)
    most = 1 << big_n
    for t in chain.terms:
        if t.bias is not None and not _bias_in_x(t):
            most += int(np.max(np.abs(t.bias))) * (int(np.max(t.multiplier)) << big_n)
    return most.bit_length() // LOG_B + 2


def _term_digits(
    e: _Emitter, term: _Term, mdig: list[np.ndarray], width: int, base: str
) -> tuple[list[str | None], list[int]]:
    """Unnormalised digits of ``x * M'`` and a bound of each: ``D_k = x * m_k`` for codes
    (``|x| <= B``), else ``x0 * m_k + x1 * m_(k-1)`` with ``x = x1 * B + x0`` (``|x| <
    2**29``: each digit below 2**30 + 2**29)."""
    x = e.op("Cast", [term.source], base + "_i32", to=_INT32)
    if term.zero_point:
        x = e.op("Sub", [x, e.const("zp", term.zero_point)], base + "_codes")
    x_max = int(np.max(term.bound))
    if _bias_in_x(term):
        x = e.op("Add", [x, e.const(base + "_bias", term.bias)], base + "_b")
        x_max = int(np.max(term.bound + np.abs(term.bias)))
    if x_max <= B:
        parts, part_max = (x,), (x_max,)
    else:
        parts, part_max = e.split(x, base), (B - 1, -(-x_max // B))
    digits: list[str | None] = [None] * width
    bounds = [0] * width
    for l_, md in enumerate(mdig):
        if not md.any():
            continue
        c = e.const(f"{base}_m{l_}", md)
        for a, xa in enumerate(parts):
            p = e.op("Mul", [xa, c], f"{base}_p{a}{l_}")
            digits[a + l_] = e.add(digits[a + l_], p, f"{base}_s{a + l_}")
            bounds[a + l_] += part_max[a] * int(md.max())
    return digits, bounds


def _emit_chain(e: _Emitter, chain: _Chain, idx: int) -> None:
    base = f"rq{idx}"
    j = common_shift(chain.shift) // LOG_B
    mdigs = [_multiplier_digits(chain, term) for term in chain.terms]
    # + a signed top digit; wide enough for the constant (biases, rounding offset)
    width = max(max(len(m) + 2 for m in mdigs), j + 2, _constant_width(chain))
    terms = [
        _term_digits(e, term, m, width, f"{base}_x{ti}")
        for ti, (term, m) in enumerate(zip(chain.terms, mdigs))
    ]
    # the digit sums (plus constant digits below B and carries below 2**17) must fit int32;
    # else each product is normalised first (its digits then below B)
    if max(sum(b[k] for _, b in terms) for k in range(width)) > _DIGIT_LIMIT:
        terms = [(e.normalise(d, f"{base}_x{ti}_n"), []) for ti, (d, _) in enumerate(terms)]
    total: list[str | None] = [None] * width
    for digits, _ in terms:
        for k, d in enumerate(digits):
            total[k] = e.add(total[k], d, f"{base}_sum{k}")
    for k, cd in enumerate(_constant_digits(chain, width)):
        if cd.any():
            total[k] = e.add(total[k], e.const(f"{base}_k{k}", cd), f"{base}_k{k}")
    r = e.normalise(total, base + "_v")
    # floor(V / B**j) = sum_{k>=j} r_k B**(k-j), from the top digit; each partial value is
    # clamped to [-B, B] first: a clamped one is beyond the int16 range at every later step
    # too, so the saturation below gives the same code (and nothing overflows int32)
    h = r[-1] or e.const("zero", 0)
    for k in range(width - 2, j - 1, -1):
        hc = e.op("Clip", [h, e.const("neg_b15", -B), e.const("b15", B)], f"{base}_h{k}_c")
        h = e.op("Mul", [hc, e.const("b15", B)], f"{base}_h{k}_s")
        if r[k] is not None:
            h = e.op("Add", [h, r[k]], f"{base}_h{k}")
    # saturation: the bounds are small, so a runtime that clamps in float32 is exact here
    h = e.op(
        "Clip",
        [h, e.const(f"sat_lo_{chain.lo}", chain.lo), e.const(f"sat_hi_{chain.hi}", chain.hi)],
        base + "_sat",
    )
    if chain.zero_point:
        h = e.op("Add", [h, e.const("zp", chain.zero_point)], base + "_zp")
    e.op("Cast", [h], base + "_cast", out=chain.output, to=chain.to)


def wide_accumulators(model: Any) -> list[str]:
    """ConvInteger nodes whose accumulator bound (``max |x| * sum |w|`` per channel) exceeds
    2**24. OpenVINO's CPU plugin runs ConvInteger as a float32 convolution: exact when every
    partial sum is an integer float32 holds, which the bound guarantees below 2**24 (the rule
    fcos's own ``int_ops.conv2d_acc`` uses); above it, exactness depends on the data."""
    g = _Graph(model)
    return [
        n.name or n.output[0]
        for n in model.graph.node
        if n.op_type == "ConvInteger" and int(np.max(_accumulator_bound(g, n))) > 1 << 24
    ]


def int64_arithmetic(model: Any) -> list[str]:
    """Names of nodes that compute on int64 tensors (Add/Sub/Mul/Div/Mod)."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    types = _elem_types(inferred)
    return [
        n.name or n.output[0]
        for n in model.graph.node
        if n.op_type in _ARITH and types.get(n.output[0]) == _INT64
    ]


def _elem_types(model: Any) -> dict[str, int]:
    g = model.graph
    out = {v.name: v.type.tensor_type.elem_type for v in (*g.value_info, *g.input, *g.output)}
    out.update({i.name: i.data_type for i in g.initializer})
    return out


def lower_int64_requantization(model: Any) -> int:
    """Rewrite every int64 requantization chain of ``model`` (onnx.ModelProto, in place) into
    int32 digit arithmetic; returns how many chains were rewritten. Raises
    :class:`LoweringError` when int64 arithmetic remains that this pass does not know."""
    import onnx

    types = _elem_types(onnx.shape_inference.infer_shapes(model))
    g = _Graph(model)
    chains = [_match(g, n, types) for n in model.graph.node if n.op_type == "Mod"]
    e = _Emitter(model, "ov")
    placed: dict[int, list[Any]] = {}
    for idx, chain in enumerate(chains):
        start = len(e.nodes)
        _emit_chain(e, chain, idx)
        placed[id(chain.last)] = e.nodes[start:]
    graph = model.graph
    nodes = []
    for n in graph.node:
        nodes.extend(placed.get(id(n), [n]))
    # drop what no output needs any more (the int64 chains), then unused initializers
    needed = {o.name for o in graph.output}
    keep = []
    for n in reversed(nodes):
        if any(o in needed for o in n.output):
            keep.append(n)
            needed.update(i for i in n.input if i)
    keep.reverse()
    del graph.node[:]
    graph.node.extend(keep)
    inits = [i for i in graph.initializer if i.name in needed]
    inits += [i for i in e.inits if i.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(inits)
    left = int64_arithmetic(model)
    if left:
        raise LoweringError(f"int64 arithmetic left after lowering: {left[:5]}")
    onnx.checker.check_model(model, full_check=True)
    return len(chains)
