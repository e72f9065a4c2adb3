"""Compile the quantized-projection kernels for Hopper (sm_90) on any machine, no GPU needed, and count the
instructions of each one's main loop: catches what the interpreter accepts but the compiler does not, and shows
the arithmetic per weight element before a GPU is at hand.

`python -m benchmarks.compile_sm90 [NAME ...]` (names: see KERNELS below). Uses the ptxas/cuobjdump that ship
with Triton. Arguments are specialized as a real launch at the 8B shapes would be (pointers and sizes
divisible by 16, M == 1 where given).
"""
import collections
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource


def compile_sm90(fn, args: dict, constexprs: dict, num_warps: int, num_stages: int):
    """args: name -> type ("*bf16", "i32", ...; a trailing "/16" marks an int divisible by 16); pointers are
    taken as 16-byte aligned."""
    sig, attrs = {}, {}
    assert set(args) | set(constexprs) == set(fn.arg_names), set(fn.arg_names) ^ (set(args) | set(constexprs))
    for i, name in enumerate(fn.arg_names):  # in the kernel's order: attrs are keyed by position
        if name in constexprs:
            sig[name] = "constexpr"
            continue
        ty = args[name]
        sig[name] = ty.removesuffix("/16")
        if ty.startswith("*") or ty.endswith("/16"):
            attrs[(i,)] = [["tt.divisibility", 16]]
    src = ASTSource(fn=fn, signature=sig, constexprs=constexprs, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=num_warps,
                                                                               num_stages=num_stages))


def loop_profile(kernel) -> tuple[int, collections.Counter]:
    """Instructions of the longest backward-branch loop in the SASS, and their opcodes."""
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as fh:
        fh.write(kernel.asm["cubin"])
        fh.flush()
        sass = subprocess.run([str(tool), "-sass", fh.name], capture_output=True, text=True, check=True).stdout
    ins = [(int(a, 16), t.strip()) for a, t in re.findall(r"/\*([0-9a-f]{4,})\*/\s+([^;]+);", sass)]
    best = (0, 0)
    for addr, text in ins:
        m = re.search(r"BRA 0x([0-9a-f]+)", text)
        if m and int(m.group(1), 16) < addr and addr - int(m.group(1), 16) > best[1] - best[0]:
            best = (int(m.group(1), 16), addr)
    body = [t for a, t in ins if best[0] <= a <= best[1]]
    ops = collections.Counter(re.sub(r"^@!?U?P\w+\s+", "", t).split()[0].split(".")[0] for t in body)
    wide = collections.Counter(re.sub(r"^@!?U?P\w+\s+", "", t).split()[0] for t in body if "LDG" in t)
    ops.update({f"  {k}": v for k, v in wide.items()})
    return len(body), ops


def _w4_gemv(cfg=None):
    from kernels.w4a16_gemv import DEFAULTS, _w4a16_gemv_kernel
    cfg = dict(DEFAULTS, **(cfg or {}))
    args = dict(x_ptr="*bf16", qw_ptr="*i32", s_ptr="*bf16", z_ptr="*bf16", b_ptr="*bf16", out_ptr="*bf16",
                N="i32/16", K="i32/16", NUM_GROUPS="i32/16", stride_xm="i32/16", stride_om="i32/16",
                stride_qn="i32/16", stride_sn="i32/16")
    const = dict(M=1, GROUP=128, P=32, PPG=4, HAS_BIAS=False, BLOCK_N=cfg["block_n"], BLOCK_B=cfg["block_b"],
                 FEW_SHIFTS=cfg["few_shifts"], PREFETCH=cfg["prefetch"], USE_PDL=True)
    per_thread = cfg["block_n"] * cfg["block_b"] * 256 // (32 * cfg["num_warps"])
    return compile_sm90(_w4a16_gemv_kernel, args, const, cfg["num_warps"], cfg["num_stages"]), per_thread


def _w4_gemv_packed(cfg=None, dtype="bf16"):
    from kernels.w4a16_gemv_packed import DEFAULTS, _w4a16_gemv_packed_kernel
    cfg = dict(DEFAULTS, **(cfg or {}))
    args = dict(x_ptr=f"*{dtype}", qw_ptr="*i32", s_ptr=f"*{dtype}", z_ptr=f"*{dtype}", b_ptr=f"*{dtype}",
                out_ptr=f"*{dtype}", N="i32/16", K="i32/16", NUM_GROUPS="i32/16", stride_xm="i32/16",
                stride_om="i32/16", stride_qn="i32/16", stride_sn="i32/16")
    const = dict(M=1, GROUP=128, P=32, PAIRED=True, HAS_BIAS=False, BLOCK_N=cfg["block_n"], BLOCK_B=cfg["block_b"],
                 ASM=True, F16=dtype == "fp16", MAGIC=1024.0 if dtype == "fp16" else 128.0, USE_PDL=True)
    per_thread = cfg["block_n"] * cfg["block_b"] * 256 // (32 * cfg["num_warps"])
    return compile_sm90(_w4a16_gemv_packed_kernel, args, const, cfg["num_warps"], cfg["num_stages"]), per_thread


def _w4_gemm(M=128):
    from kernels.w4a16_gemm import GROUP_M, _w4a16_gemm_kernel, config_for
    cfg = config_for(M)
    args = dict(x_ptr="*bf16", qw_ptr="*i32", s_ptr="*bf16", z_ptr="*bf16", b_ptr="*bf16", out_ptr="*bf16",
                M="i32/16", N="i32/16", K="i32/16", stride_xm="i32/16", stride_om="i32/16",
                stride_qn="i32/16", stride_sn="i32/16")
    const = dict(GROUP=128, P=32, PPG=4, HAS_BIAS=False, WIDE=False, BLOCK_M=cfg["block_m"],
                 BLOCK_N=cfg["block_n"], GROUP_M=GROUP_M, SPLIT_K=4 if M <= 16 else 1, USE_PDL=True)
    return compile_sm90(_w4a16_gemm_kernel, args, const, cfg["num_warps"], cfg["num_stages"]), \
        cfg["block_n"] * 256 // (32 * cfg["num_warps"])


def _fp8_gemv():
    from kernels.fp8_gemv import DEFAULTS, _fp8_gemv_kernel
    cfg = DEFAULTS
    args = dict(x_ptr="*bf16", w_ptr="*fp8e4nv", ws_ptr="*fp32", b_ptr="*fp32", out_ptr="*bf16", N="i32/16",
                K="i32/16", stride_xm="i32/16", stride_om="i32/16", stride_wn="i32/16")
    const = dict(M=1, HAS_BIAS=False, BLOCK_N=cfg["block_n"], BLOCK_K=cfg["block_k"], PREFETCH=cfg["prefetch"],
                 USE_PDL=True)
    return compile_sm90(_fp8_gemv_kernel, args, const, cfg["num_warps"], cfg["num_stages"]), \
        cfg["block_n"] * cfg["block_k"] // (32 * cfg["num_warps"])


def _fp8_gemv_wide(cfg=None):
    from kernels.fp8_gemv_wide import DEFAULTS, _fp8_gemv_wide_kernel
    cfg = dict(DEFAULTS, **(cfg or {}))
    args = dict(x_ptr="*bf16", w_ptr="*fp8e4nv", ws_ptr="*fp32", b_ptr="*fp32", out_ptr="*bf16", N="i32/16",
                K="i32/16", stride_xm="i32/16", stride_om="i32/16", stride_wn="i32/16")
    const = dict(M=1, HAS_BIAS=False, BLOCK_N=cfg["block_n"], BLOCK_W=cfg["block_w"], ASM=True, X_BF16=True,
                 USE_PDL=True)
    return compile_sm90(_fp8_gemv_wide_kernel, args, const, cfg["num_warps"], cfg["num_stages"]), \
        cfg["block_n"] * cfg["block_w"] * 4 // (32 * cfg["num_warps"])


def _fp8_gemm(M=4096):
    from kernels.fp8_gemm import GROUP_M, _fp8_gemm_kernel, config_for
    cfg = config_for(M)
    args = dict(a_ptr="*fp8e4nv", b_ptr="*fp8e4nv", as_ptr="*fp32", bs_ptr="*fp32", bias_ptr="*fp32",
                out_ptr="*bf16", M="i32/16", N="i32/16", K="i32/16", stride_am="i32/16", stride_bn="i32/16",
                stride_om="i32/16")
    const = dict(HAS_BIAS=False, BLOCK_M=cfg["block_m"], BLOCK_N=cfg["block_n"], BLOCK_K=cfg["block_k"],
                 GROUP_M=GROUP_M, USE_PDL=True)
    return compile_sm90(_fp8_gemm_kernel, args, const, cfg["num_warps"], cfg["num_stages"]), 0


def _quant(K=14336):
    from kernels.fp8_quant import _quant_fp8_kernel
    args = dict(x_ptr="*bf16", q_ptr="*fp8e4nv", s_ptr="*fp32", in_scale_ptr="*fp32", K="i32/16",
                stride_xm="i32/16", stride_qm="i32/16")
    const = dict(STATIC=False, ONE_PASS=True, BLOCK_K=triton.next_power_of_2(K), USE_PDL=True)
    return compile_sm90(_quant_fp8_kernel, args, const, 16, 1), 0


def _silu_quant(I=14336):
    from kernels.fp8_silu_quant import _silu_mul_quant_kernel
    args = dict(x_ptr="*bf16", q_ptr="*fp8e4nv", s_ptr="*fp32", I="i32/16", stride_x="i32/16", stride_q="i32/16")
    return compile_sm90(_silu_mul_quant_kernel, args, dict(BLOCK=16384, USE_PDL=True), 16, 1), 0


def _w4_dequant():
    from kernels.w4a16_dequant import _dequant_kernel
    args = dict(qw_ptr="*i32", s_ptr="*bf16", z_ptr="*bf16", out_ptr="*bf16", N="i32/16", K="i32/16",
                stride_qn="i32/16", stride_sn="i32/16", stride_on="i32/16")
    const = dict(GROUP=128, P=32, PPG=4, BLOCK_N=16, BLOCK_B=4, USE_PDL=True)
    return compile_sm90(_dequant_kernel, args, const, 4, 1), 0


def _split_k_sum():
    from kernels.split_k_sum import _split_k_sum_kernel
    args = dict(part_ptr="*fp32", b_ptr="*bf16", out_ptr="*bf16", MN="i32/16", N="i32/16")
    return compile_sm90(_split_k_sum_kernel, args, dict(SPLIT_K=4, HAS_BIAS=True, BLOCK=1024, USE_PDL=True), 4, 1), 0


def _skinny(block_m=16, fp8=False, dot_f16=False, w8a8=False, **overrides):
    """kernels/skinny_gemm.py at the 8B down projection (N 4096, K 14336: split K), bf16 activations; fp8: an e4m3
    weight (W8A16), widened to bf16 or (dot_f16) both operands to fp16; w8a8: x e4m3 as well."""
    from kernels.skinny_gemm import _skinny_kernel, config_for
    cfg = dict(config_for(4096, 14336, 1 if fp8 else 2), **overrides)
    args = dict(x_ptr="*fp8e4nv" if w8a8 else "*bf16", xs_ptr="*fp32", w_ptr="*fp8e4nv" if fp8 else "*bf16",
                ws_ptr="*fp32", b_ptr="*bf16", out_ptr="*bf16",
                part_ptr="*fp32", M="i32", N="i32/16", K="i32/16", K_PER_SPLIT="i32/16", stride_xm="i32/16",
                stride_wn="i32/16", stride_om="i32/16")
    const = dict(HAS_BIAS=False, SPLIT=cfg["split_k"] > 1, BLOCK_M=block_m, BLOCK_N=cfg["block_n"],
                 BLOCK_K=cfg["block_k"], W_FP8=fp8, X_FP8=w8a8, DOT_F16=dot_f16, WIDEN=False,
                 USE_PDL=True)
    return compile_sm90(_skinny_kernel, args, const, cfg["num_warps"], cfg["num_stages"]), \
        cfg["block_n"] * cfg["block_k"] // (32 * cfg["num_warps"])


_PREFILL_ARGS = dict(q_ptr="*bf16", k_cache_ptr="*bf16", v_cache_ptr="*bf16", block_tables_ptr="*i32",
                     cu_seqlens_ptr="*i32", context_lens_ptr="*i32", out_ptr="*bf16", k_scale_ptr="*bf16",
                     v_scale_ptr="*bf16", qk_scale="fp32", B="i32", stride_qt="i32/16", stride_qh="i32/16",
                     stride_ot="i32/16", stride_oh="i32/16", stride_cb="i32/16", stride_ct="i32/16",
                     stride_ch="i32/16", stride_bt="i32")


def _prefill_base(**overrides):
    """kernels/prefill_attention.py at the 8B shape (32 query heads, 8 KV heads, D 128, bf16)."""
    from kernels.prefill_attention import DEFAULTS, MIN_BLOCK_B, _prefill_kernel
    cfg = dict(DEFAULTS, **overrides)
    const = dict(GROUP=4, D=128, BLOCK_SIZE=16, BLOCK_M=cfg["block_m"], BLOCK_N=cfg["block_n"], BLOCK_B=MIN_BLOCK_B,
                 DOT_F32=False, PRECISION="tf32", KV_FP8=False, FP8_MODE=0, SPLIT_TAIL=cfg.get("split_tail", False))
    return compile_sm90(_prefill_kernel, _PREFILL_ARGS, const, cfg["num_warps"], cfg["num_stages"]), 0


_PACKED_ARGS = dict(_PREFILL_ARGS, k_new_ptr="*bf16", v_new_ptr="*bf16", stride_nt="i32/16", stride_nh="i32/16")


def _prefill_packed(kv_fp8=False, own_kv=False, **overrides):
    """kernels/prefill_packed.py at the 8B shape, PACKED_DEFAULTS with the overrides (the sweep's variants)."""
    from kernels.prefill_packed import MIN_BLOCK_B, PACKED_DEFAULTS, _prefill_packed_kernel
    cfg = dict(PACKED_DEFAULTS, **overrides)
    const = dict(GROUP=4, PACK=cfg["pack"] or 4, D=128, BLOCK_SIZE=16, BLOCK_M=cfg["block_m"], BLOCK_N=cfg["block_n"],
                 BLOCK_B=MIN_BLOCK_B, DOT_F32=False, PRECISION="tf32", KV_FP8=kv_fp8, K_NATURAL=cfg["k_natural"],
                 PAGE_ADDR=cfg["page_addr"], SCALE_Q=cfg["scale_q"], LOOP_STAGES=cfg["loop_stages"], OWN_KV=own_kv,
                 TMA_NEW=cfg["tma_new"])
    desc = f"tensordesc<bf16[{cfg['block_n']},128]>" if cfg["tma_new"] else "*bf16"
    fp8 = dict(k_cache_ptr="*fp8e4nv", v_cache_ptr="*fp8e4nv", k_scale_ptr="*fp32", v_scale_ptr="*fp32")
    args = dict(_PACKED_ARGS, k_desc=desc, v_desc=desc, **(fp8 if kv_fp8 else {}))
    return compile_sm90(_prefill_packed_kernel, args, const, cfg["num_warps"], cfg["num_stages"]), 0


def _prefill_variants():
    """name -> builder for every prefill variant benchmarks/prefill_sweep.py times (its VARIANTS)."""
    from benchmarks.prefill_variants import VARIANTS
    return {f"prefill_{name}": (lambda ov=ov: _prefill_packed(**{k: v for k, v in ov.items() if k != "variant"})
                                if ov.get("variant") == "packed" else _prefill_base(**ov))
            for name, ov in VARIANTS.items()}


KERNELS = {
    "w4_gemv": _w4_gemv, "w4_gemv_shifts": lambda: _w4_gemv(dict(few_shifts=False)),
    "w4_gemv_2warps": lambda: _w4_gemv(dict(num_warps=2)),
    "w4_gemv_packed": _w4_gemv_packed, "w4_gemv_packed_f16": lambda: _w4_gemv_packed(dtype="fp16"),
    "w4_gemm_m16": lambda: _w4_gemm(16), "w4_gemm_m128": lambda: _w4_gemm(128),
    "fp8_gemv": _fp8_gemv, "fp8_gemv_wide": _fp8_gemv_wide,
    "fp8_gemv_wide_16x1024": lambda: _fp8_gemv_wide(dict(block_n=16, block_w=1024, num_warps=8)),
    "fp8_gemm_m64": lambda: _fp8_gemm(64), "fp8_gemm_m4096": lambda: _fp8_gemm(4096),
    "fp8_quant": _quant, "fp8_silu_quant": _silu_quant, "w4_dequant": _w4_dequant,
    "w4_split_k_sum": _split_k_sum,
    "skinny_m16": _skinny, "skinny_m32": lambda: _skinny(32), "skinny_m16_n128": lambda: _skinny(block_n=128),
    "skinny_fp8_bf16": lambda: _skinny(fp8=True), "skinny_fp8_f16": lambda: _skinny(fp8=True, dot_f16=True),
    "skinny_w8a8": lambda: _skinny(fp8=True, w8a8=True),
    **_prefill_variants(), "prefill_packed_fp8": lambda: _prefill_packed(kv_fp8=True),
}


def main() -> None:
    names = sys.argv[1:] or list(KERNELS)
    for name in names:
        kernel, per_thread = KERNELS[name]()
        n, ops = loop_profile(kernel)
        top = ", ".join(f"{k} {v}" for k, v in ops.most_common() if not k.startswith(" "))[:400]
        loads = ", ".join(f"{k.strip()} {v}" for k, v in ops.items() if k.startswith(" "))
        per = f" = {n / per_thread:.2f} per weight element" if per_thread else ""
        print(f"{name}: main loop {n} instructions per thread per step{per} "
              f"(weight elements per thread per step: {per_thread})\n    {top}\n    loads: {loads}", flush=True)


if __name__ == "__main__":
    main()
