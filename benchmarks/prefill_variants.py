"""The prefill-attention variants that benchmarks/prefill_sweep.py times on the GPU and benchmarks/compile_sm90.py
builds for sm_90 (tests/kernels/test_prefill_variants_sm90.py): name -> paged_prefill_attention overrides.
"base" is today's default; the "packed" ones are kernels/prefill_packed.py (see its switches). own_kv=True stands for
the k_new / v_new tensors (the step's own rotated k and v), which the sweep passes."""

VARIANTS: dict[str, dict] = {
    "base": {},
    "base_bn128": dict(block_n=128, num_stages=2),
    "packed": dict(variant="packed"),  # GQA pack 4, K natural, page addressing, q pre-scaled, 128 x 64, 8 warps
    "packed_bn128": dict(variant="packed", block_n=128, num_stages=2),
    "packed_kdn": dict(variant="packed", k_natural=False),  # K read as [D, BLOCK_N], as base does
    "packed_noaddr": dict(variant="packed", page_addr=False),  # one block-id load per key, as base does
    "packed_noscale": dict(variant="packed", scale_q=False),
    "packed_pack1": dict(variant="packed", pack=1),  # one head per program, the other switches on
    "packed_pack2": dict(variant="packed", pack=2),
    "packed_bm64w4": dict(variant="packed", block_m=64, num_warps=4),
    "packed_loop4": dict(variant="packed", loop_stages=4),
    "packed_st2": dict(variant="packed", num_stages=2),
    "packed_own": dict(variant="packed", own_kv=True),  # the new tokens' K/V from the step's k / v
    "packed_own_bn128": dict(variant="packed", own_kv=True, block_n=128, num_stages=2),
    "packed_own_tma": dict(variant="packed", own_kv=True, tma_new=True),  # and loaded by TMA
    "packed_own_tma_bn128": dict(variant="packed", own_kv=True, tma_new=True, block_n=128, num_stages=2),
    # every switch off: the packed kernel's other side of each constexpr branch (and close to base's loop)
    "packed_plain": dict(variant="packed", pack=1, k_natural=False, page_addr=False, scale_q=False, loop_stages=4),
    "packed_plain_own": dict(variant="packed", pack=1, k_natural=False, page_addr=False, scale_q=False, loop_stages=4,
                             own_kv=True),
}
