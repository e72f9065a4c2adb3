"""The rules of kernels/pdl.py, checked on the code the GPU would run: every kernel launched with PDL is
compiled here for a Hopper GPU (sm_90, no GPU needed: Triton ships ptxas) and its PTX is read in order.

- no store (or atomic) before `griddepcontrol.wait`: the kernel before may still be reading that memory;
- the GEMV loads (its first weight chunk) before the wait: the overlap PDL is there for;
- the kernels that read their input at once let the next kernel launch before they wait;
- with USE_PDL off, none of it is in the code.

The interpreter (this directory's conftest) cannot compile for a GPU, so the compiling runs in a child
process without TRITON_INTERPRET.
"""
import json
import os
import re
import subprocess
import sys

import pytest

BF, I32, F32, FP8 = "*bf16", "i32", "fp32", "*fp8e4nv"


def _rotary_signature(cache: str, scale: str) -> dict:
    """kernels.rotary's store into a cache of `cache` elements with scales of `scale` (unread unless fp8)."""
    return dict(pos_ptr="*i32", slot_ptr="*i32", q_ptr=BF, k_ptr=BF, v_ptr=BF, cache_ptr="*fp32", k_cache_ptr=cache,
                v_cache_ptr=cache, k_scale_ptr=scale, v_scale_ptr=scale, stride_qt=I32, stride_qh=I32,
                stride_kt=I32, stride_kh=I32, stride_vt=I32, stride_vh=I32, stride_cache=I32, stride_cslot=I32,
                stride_ch=I32, HQ=I32, HK=I32)


def _decode_signature(cache: str, scale: str) -> dict:
    """kernels.decode_attention's kernel over a cache of `cache` elements with scales of `scale`."""
    return dict(q_ptr=BF, k_cache_ptr=cache, v_cache_ptr=cache, block_tables_ptr="*i32", context_lens_ptr="*i32",
                out_ptr=BF, acc_ws_ptr="*fp32", ml_ws_ptr="*fp32", k_scale_ptr=scale, v_scale_ptr=scale,
                qk_scale=F32, num_splits=I32, HQ=I32, stride_qb=I32, stride_qh=I32, stride_ob=I32, stride_oh=I32,
                stride_cb=I32, stride_ct=I32, stride_ch=I32, stride_bt=I32)

KERNELS = {  # kernel[ variant]: (module, signature of the non-constexpr arguments, constexprs, num_warps)
    "_gemv_kernel": ("kernels.gemv", dict(x_ptr=BF, w_ptr=BF, b_ptr=BF, out_ptr=BF, N=I32, K=I32, stride_wn=I32),
                     dict(HAS_BIAS=False, BLOCK_N=2, BLOCK_K=2048), 8),
    "_rms_norm_kernel": ("kernels.rmsnorm", dict(x_ptr=BF, res_ptr=BF, w_ptr=BF, out_ptr=BF, scale_ptr=BF,
                                                 res_out_ptr=BF, stride_x=I32, stride_r=I32, stride_o=I32,
                                                 stride_ro=I32, H=I32, eps=F32),
                         dict(HAS_RESIDUAL=True, FP8_OUT=False, BLOCK=4096), 8),
    "_all_reduce_rms_norm_kernel": (
        "kernels.allreduce_rmsnorm",
        dict(x_ptr=BF, res_ptr=BF, w_ptr=BF, out_ptr=BF, res_out_ptr=BF, bufs_ptr="*i64", counters_ptr="*i32",
             stride_x=I32, stride_r=I32, stride_o=I32, stride_ro=I32, H=I32, eps=F32, rank=I32, slot_stride=I32,
             src_stride=I32),
        dict(WORLD=2, BITS=16, BLOCK=4096, PUSH=True, REDUCE=True, HAS_RESIDUAL=True), 8),
    "_silu_and_mul_kernel": ("kernels.activation", dict(x_ptr=BF, out_ptr=BF, stride_x=I32, stride_o=I32, I=I32),
                             dict(BLOCK=1024), 4),
    "_rotary_store_kv_kernel": (
        "kernels.rotary",
        _rotary_signature(BF, BF),
        dict(HALF=64, BLOCK_HQ=16, BLOCK_HK=4, KV_FP8=False, ROUND_F32=False, K_IN_PLACE=False), 4),
    "_rotary_store_kv_kernel fp8": (  # --kv-cache-dtype fp8: quantizes into the cache, reads the scales
        "kernels.rotary",
        _rotary_signature(FP8, "*fp32"),
        dict(HALF=64, BLOCK_HQ=16, BLOCK_HK=4, KV_FP8=True, ROUND_F32=False, K_IN_PLACE=False), 4),
    "_decode_kernel": (
        "kernels.decode_attention",
        _decode_signature(BF, BF),
        dict(GROUP=4, BLOCK_G=16, D=128, BLOCK_SIZE=16, BLOCK_N=64, SINGLE_SPLIT=False, DOT_F32=False,
             PRECISION="tf32", KV_FP8=False, FP8_MODE=0, SPLIT_TAIL=False), 4),
    "_decode_kernel fp8": (  # an fp8 cache: the scales are read after the wait too
        "kernels.decode_attention",
        _decode_signature(FP8, "*fp32"),
        dict(GROUP=4, BLOCK_G=16, D=128, BLOCK_SIZE=16, BLOCK_N=128, SINGLE_SPLIT=True, DOT_F32=False,
             PRECISION="tf32", KV_FP8=True, FP8_MODE=1, SPLIT_TAIL=True), 4),
    "_decode_kernel fp8 asm_vt": (  # the other way of reading V (kernels/attention_block.py)
        "kernels.decode_attention",
        _decode_signature(FP8, "*fp32"),
        dict(GROUP=4, BLOCK_G=16, D=128, BLOCK_SIZE=16, BLOCK_N=128, SINGLE_SPLIT=True, DOT_F32=False,
             PRECISION="tf32", KV_FP8=True, FP8_MODE=2, SPLIT_TAIL=False), 4),
    "_reduce_kernel": ("kernels.decode_attention",
                       dict(out_ptr=BF, acc_ws_ptr="*fp32", ml_ws_ptr="*fp32", context_lens_ptr="*i32",
                            num_splits=I32, HQ=I32, stride_ob=I32, stride_oh=I32),
                       dict(D=128, BLOCK_S=16, BLOCK_N=64), 4),
    "_all_gather_kernel": ("kernels.allgather",
                           dict(x_ptr=BF, out_ptr=BF, bufs_ptr="*i64", counters_ptr="*i32", numel=I32, cols=I32,
                                rank=I32, slot_stride=I32, src_stride=I32),
                           dict(WORLD=2, BITS=16, BLOCK=2048, PUSH=True, GATHER=True), 4),
    "_chunk_max_kernel": ("kernels.argmax", dict(x_ptr=BF, val_ptr="*fp32", idx_ptr="*i64", V=I32, stride_x=I32, S=I32),
                          dict(CHUNK=2048), 4),
    "_merge_kernel": ("kernels.argmax", dict(val_ptr="*fp32", idx_ptr="*i64", out_ptr="*i64", S=I32),
                      dict(BLOCK_S=64), 1),
}
STORE = re.compile(r"\b(st\.global|atom\.|red\.)")
LOAD = re.compile(r"\bld\.global")


def _compile_all() -> dict:
    """In the child: PTX facts of every kernel, USE_PDL on and off."""
    import importlib

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    facts = {}
    for name, (module, signature, constexprs, num_warps) in KERNELS.items():
        fn = getattr(importlib.import_module(module), name.split()[0])  # "NAME variant": another specialization
        for pdl in (True, False):
            cx = dict(constexprs, USE_PDL=pdl)
            src = ASTSource(fn, dict(signature, **{k: "constexpr" for k in cx}), constexprs=cx)
            compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32),
                                      options={"num_warps": num_warps, "launch_pdl": pdl})
            lines = compiled.asm["ptx"].splitlines()
            wait = [i for i, line in enumerate(lines) if "griddepcontrol.wait" in line]
            launch = [i for i, line in enumerate(lines) if "griddepcontrol.launch_dependents" in line]
            first = wait[0] if wait else len(lines)
            facts[f"{name} {pdl}"] = dict(
                waits=len(wait), launches=len(launch), launch_before_wait=bool(launch and wait and launch[0] < first),
                stores_before_wait=sum(bool(STORE.search(line)) for line in lines[:first]),
                loads_before_wait=sum(bool(LOAD.search(line)) for line in lines[:first]),
                stores=sum(bool(STORE.search(line)) for line in lines), launch_pdl=bool(compiled.metadata.launch_pdl))
    return facts


@pytest.fixture(scope="module")
def facts():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, os.path.abspath(__file__)], env=env, cwd=root, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", list(KERNELS))
def test_pdl_kernel_waits_before_writing(facts, name):
    on, off = facts[f"{name} True"], facts[f"{name} False"]
    assert on["launch_pdl"] and on["waits"] == 1 and on["launches"] == 1
    assert on["stores"] > 0 and on["stores_before_wait"] == 0
    if name == "_gemv_kernel":
        assert on["loads_before_wait"] > 0  # the first chunk of the weight, read while the kernel before ends
        assert not on["launch_before_wait"]  # its dependents launch once every program is past its loop
    else:
        assert on["launch_before_wait"] and on["loads_before_wait"] == 0
    assert not off["launch_pdl"] and off["waits"] == 0 and off["launches"] == 0


def test_no_pdl_on_the_cpu():
    import torch

    from kernels.pdl import launch_options

    assert launch_options(torch.zeros(1)) == {"USE_PDL": False}  # no launch_pdl for the interpreter either


if __name__ == "__main__":
    print(json.dumps(_compile_all()))
