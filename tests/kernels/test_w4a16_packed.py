"""The packed W4A16 GEMV (kernels/w4a16_gemv_packed.py): its Triton path in the interpreter against the torch
reference, and its PTX (which the interpreter cannot run) executed by a small numpy model of the instructions it
uses, on every nibble value at every position, every zero point 0..16 and a range of activations."""
import re

import numpy as np
import pytest
import torch

from kernels.w4a16 import w4a16_linear_ref
from kernels.w4a16_gemv import w4a16_gemv
from kernels.w4a16_gemv_packed import packed_supported, word_asm
from tests.kernels.test_w4a16 import _check, _weights, _x


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("n,k,group,m,symmetric,bias", [
    (37, 512, 128, 1, False, True),  # partial row block; planes 0..3 and 4..7 in different groups
    (10, 768, 128, 3, True, False),  # 3 blocks: a partial step; several rows of x
    (9, 1536, 256, 2, False, False),  # one group per block
    (7, 1024, 1024, 1, False, True),  # per-channel
])
def test_packed_gemv_matches_reference(dtype, n, k, group, m, symmetric, bias):
    _, _, _, t = _weights(n, k, group, symmetric, dtype)
    x = _x(m, k, dtype)
    b = (torch.randint(-8, 9, (n,)).float() / 2).to(dtype) if bias else None
    assert packed_supported(x, k, group)
    out = w4a16_gemv(x, t, group, b, variant="packed", block_n=4, block_b=2, num_warps=1, num_stages=1)
    _check(out, w4a16_linear_ref(x, t, group, b), dtype)


def test_packed_variant_falls_back_where_it_cannot_take_the_group():
    _, _, _, t = _weights(9, 512, 32, False, torch.bfloat16)  # one group per plane: not one zero per half word
    x = _x(2, 512, torch.bfloat16)
    assert not packed_supported(x, 512, 32)
    out = w4a16_gemv(x, t, 32, None, variant="packed", block_n=4, block_b=2, num_warps=1, num_stages=1)
    _check(out, w4a16_linear_ref(x, t, 32), torch.bfloat16)


# --- the PTX, run by a numpy model of its instructions ---------------------------------------------------------

def _round16(v: np.ndarray, kind: str) -> np.ndarray:
    """float64 -> the nearest bf16 / fp16 value (ties to even), as float64 (no subnormals occur here)."""
    if kind == "f16":
        return v.astype(np.float16).astype(np.float64)
    m, e = np.frexp(v)
    return np.ldexp(np.round(m * 256.0), e - 8)  # 8 significant bits; np.round ties to even


def _halves(r: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    lo, hi = (r & 0xFFFF).astype(np.uint16), (r >> 16).astype(np.uint16)
    if kind == "f16":
        return lo.view(np.float16).astype(np.float64), hi.view(np.float16).astype(np.float64)
    return ((lo.astype(np.uint32) << 16).view(np.float32).astype(np.float64),
            (hi.astype(np.uint32) << 16).view(np.float32).astype(np.float64))


def _pack16(lo: np.ndarray, hi: np.ndarray, kind: str) -> np.ndarray:
    def bits(v):
        if kind == "f16":
            return v.astype(np.float16).view(np.uint16).astype(np.uint32)
        return v.astype(np.float32).view(np.uint32) >> 16  # exact: v is a bf16 value
    return bits(lo) | (bits(hi) << 16)


def run_ptx(asm: str, operands: dict) -> dict:
    """Executes the instructions word_asm emits on uint32 arrays; returns every register."""
    regs = {k: np.asarray(v, dtype=np.uint32) for k, v in operands.items()}

    def val(tok):
        return np.uint32(int(tok, 16)) if tok.startswith("0x") else (np.uint32(int(tok)) if tok.isdigit()
                                                                      else regs[tok])
    body = asm.replace("{lo, hi}", "lo:hi").replace("{", ";").replace("}", ";")  # braces: scopes, then gone
    for ins in (s.strip() for s in body.split(";")):
        if not ins or ins.startswith(".reg"):
            continue
        op, rest = ins.split(None, 1)
        args = [a.strip() for a in rest.split(",")]
        kind = "bf16" if "bf16" in op else "f16"
        if op == "mov.b32" and args[0] == "lo:hi":  # a word into its halves
            regs["lo"], regs["hi"] = regs[args[1]] & 0xFFFF, regs[args[1]] >> 16
        elif op == "shr.u32":
            regs[args[0]] = val(args[1]) >> val(args[2])
        elif op == "shl.b32":
            regs[args[0]] = (val(args[1]) << val(args[2])) & np.uint32(0xFFFFFFFF)
        elif op == "and.b32":
            regs[args[0]] = val(args[1]) & val(args[2])
        elif op == "lop3.b32":
            assert args[4] == "0xea"  # (a & b) | c
            regs[args[0]] = (val(args[1]) & val(args[2])) | val(args[3])
        elif op.split(".")[0] in ("sub", "mul", "fma"):
            assert op.split(".")[1] == "rn", op  # the model rounds to nearest even
            a, b = _halves(val(args[1]), kind), _halves(val(args[2]), kind)
            c = _halves(val(args[3]), kind) if op.startswith("fma") else (0, 0)
            f = {"sub": lambda i: a[i] - b[i], "mul": lambda i: a[i] * b[i], "fma": lambda i: a[i] * b[i] + c[i]}
            res = [_round16(f[op.split(".")[0]](i), kind) for i in (0, 1)]
            regs[args[0]] = _pack16(res[0], res[1], kind)
        elif op == "cvt.f32.f16":
            regs[args[0]] = (regs[args[1]].astype(np.uint16).view(np.float16).astype(np.float32)).view(np.uint32)
        elif op == "mov.b32":
            regs[args[0]] = regs[args[1]]
        else:
            raise AssertionError(f"no model for {ins!r}")
    return regs


@pytest.mark.parametrize("kind", ["bf16", "f16"])
def test_word_ptx_dequantizes_exactly_and_sums_within_16_bit_rounding(kind):
    rng = np.random.default_rng(0)
    n = 16 * 17 * 8  # every nibble value at every position, against every zero point 0..16
    q = (np.arange(n)[:, None] + np.arange(8)[None, :] * 5) % 16  # q[:, i]: nibble i
    word = (q.astype(np.uint32) << (4 * np.arange(8, dtype=np.uint32))).sum(1).astype(np.uint32)
    z_a, z_b = (np.arange(n) // 16) % 17, (np.arange(n) // 16 + 7) % 17
    dt = np.float16 if kind == "f16" else np.float32
    x = rng.standard_normal((n, 8)) * 2.0 ** rng.integers(-6, 7, (n, 1))  # x[:, i]: the activation of plane i
    x = _round16(x, kind)
    magic = 1024.0 if kind == "f16" else 128.0
    ops = {"$2": word, "$7": _pack16(magic + z_a.astype(dt), magic + z_b.astype(dt), kind)}
    for s in range(4):
        ops[f"${3 + s}"] = _pack16(x[:, s], x[:, s + 4], kind)
    regs = run_ptx(word_asm(kind), ops)
    for s in range(4):  # after the sub: (q_s - z_A, q_{s+4} - z_B) exactly
        lo, hi = _halves(regs[f"t{s}"], kind)
        assert np.array_equal(lo, q[:, s] - z_a) and np.array_equal(hi, q[:, s + 4] - z_b)
    pa, pb = regs["$0"].view(np.float32).astype(np.float64), regs["$1"].view(np.float32).astype(np.float64)
    for got, planes, z in ((pa, range(4), z_a), (pb, range(4, 8), z_b)):
        terms = np.stack([(q[:, i] - z) * x[:, i] for i in planes], 1)
        exact, size = terms.sum(1), np.abs(terms).sum(1)
        ulp = 2.0 ** -8 if kind == "bf16" else 2.0 ** -11  # unit roundoff of the 16-bit partial sums
        assert np.all(np.abs(got - exact) <= 4 * ulp * size + 1e-30)
        assert np.mean(np.abs(got - exact) <= ulp * size) > 0.9  # mostly within one rounding


def test_word_ptx_uses_only_modelled_instructions():
    for kind in ("bf16", "f16"):
        ops = set(re.findall(r"^\s*\{?\s*([a-z][\w.]+)\s", word_asm(kind).replace(";", "\n"), re.M))
        assert ops <= {"shr.u32", "lop3.b32", f"sub.rn.{kind}x2", f"mul.rn.{kind}x2", f"fma.rn.{kind}x2", "shl.b32",
                       "and.b32", "mov.b32", "cvt.f32.f16"}, ops
