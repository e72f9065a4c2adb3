"""Which quantization a model uses: config.json's `quantization_config`, or --quantization.

Anything ferry cannot load exactly is an UnsupportedQuantization at start, naming what is unsupported;
nothing is guessed or silently dropped. Published formats read here:
- AWQ (AutoAWQ): quant_method awq, bits 4, group_size (q_group_size), zero_point, version gemm.
- GPTQ (AutoGPTQ / GPTQModel): quant_method gptq, bits 4, group_size (-1: one group per row), sym, desc_act,
  checkpoint_format gptq (zeros stored minus one) or gptq_v2.
- compressed-tensors (llm-compressor): format pack-quantized (int4 weights, W4A16) or float-quantized (FP8
  W8A8) in one config group targeting Linear, lm_head ignored.
- fp8 (AutoFP8 / llm-compressor's older FP8): per-tensor weight_scale, activation_scheme static or dynamic.
"""
from __future__ import annotations

import re

from engine.quant.scheme import QuantScheme, UnsupportedQuantization

METHODS = ("awq", "gptq", "compressed-tensors", "fp8")
# --load-format dummy with --quantization X and no quantization_config: the common published preset of X.
DUMMY_SCHEMES = {"awq": QuantScheme("awq", group_size=128, asymmetric=True),
                 "gptq": QuantScheme("gptq", group_size=128),
                 "compressed-tensors": QuantScheme("ct-pack", group_size=128)}
PROJECTIONS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
               "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def read_scheme(hf_config: dict, override: str = "", dummy: bool = False) -> QuantScheme | None:
    """The scheme for this model; None: unquantized. override is settings.quantization ("" = the checkpoint's)."""
    override = (override or "").lower()
    if override and override not in METHODS:
        raise UnsupportedQuantization(f"--quantization {override!r} is not supported (one of {', '.join(METHODS)})")
    qc = hf_config.get("quantization_config")
    if not qc:
        if not override:
            return None
        if override == "fp8":
            return QuantScheme("fp8-online")
        if dummy:
            return DUMMY_SCHEMES[override]
        raise UnsupportedQuantization(
            f"--quantization {override}: config.json has no quantization_config, so this is not a {override} "
            "checkpoint (only fp8 quantizes a 16-bit checkpoint while it loads)")
    method = str(qc.get("quant_method", "")).lower()
    if override and override != method:
        raise UnsupportedQuantization(f"--quantization {override} does not match the checkpoint's quantization_config "
                                      f"(quant_method {method!r})")
    parse = {"awq": _awq, "gptq": _gptq, "compressed-tensors": _compressed_tensors, "fp8": _fp8}.get(method)
    if parse is None:
        raise UnsupportedQuantization(f"quantization_config quant_method {method!r} is not supported "
                                      f"(ferry loads {', '.join(METHODS)})")
    return parse(qc, _our_linear_names(hf_config))


def _our_linear_names(hf_config: dict) -> list[str]:
    return [f"model.layers.{i}.{p}" for i in range(int(hf_config.get("num_hidden_layers", 0))) for p in PROJECTIONS]


def _fail(method: str, what: str):
    raise UnsupportedQuantization(f"{method} checkpoint: {what} is not supported")


def _four_bit(method: str, bits) -> None:
    if bits != 4:
        _fail(method, f"{bits}-bit weights (only 4-bit)")


def _group(method: str, group, allow_row: bool) -> int:
    if not isinstance(group, int) or isinstance(group, bool) or (group <= 0 and not (allow_row and group == -1)):
        _fail(method, f"group_size {group!r}")
    return group


def _awq(qc: dict, names: list[str]) -> QuantScheme:
    _four_bit("AWQ", qc.get("bits", qc.get("w_bit")))
    group = _group("AWQ", qc.get("group_size", qc.get("q_group_size")), allow_row=False)
    version = str(qc.get("version", "gemm")).lower()
    if version != "gemm":
        _fail("AWQ", f"version {version!r} packing (only gemm)")
    if not qc.get("zero_point", True):
        _fail("AWQ", "zero_point false")
    skipped = [k for k in qc.get("modules_to_not_convert") or [] if any(k in n for n in names)]
    if skipped:
        _fail("AWQ", f"modules_to_not_convert {skipped} (layers left unquantized)")
    return QuantScheme("awq", group_size=group, asymmetric=True)


def _gptq(qc: dict, names: list[str]) -> QuantScheme:
    _four_bit("GPTQ", qc.get("bits"))
    group = _group("GPTQ", qc.get("group_size", 128), allow_row=True)
    fmt = str(qc.get("checkpoint_format", "gptq")).lower()
    if fmt not in ("gptq", "gptq_v2"):
        _fail("GPTQ", f"checkpoint_format {fmt!r} (only gptq and gptq_v2)")
    if qc.get("lm_head"):
        _fail("GPTQ", "a quantized lm_head")
    if qc.get("dynamic"):
        _fail("GPTQ", "per-module `dynamic` overrides")
    return QuantScheme("gptq", group_size=group, asymmetric=not qc.get("sym", True),
                       desc_act=bool(qc.get("desc_act", False)), gptq_v1_zeros=fmt == "gptq")


def _fp8(qc: dict, names: list[str]) -> QuantScheme:
    if qc.get("weight_block_size"):
        _fail("FP8", f"block-wise weight scales (weight_block_size {qc['weight_block_size']})")
    if str(qc.get("fmt", "e4m3")).lower() != "e4m3":
        _fail("FP8", f"fmt {qc.get('fmt')!r} (only e4m3)")
    scheme = str(qc.get("activation_scheme", "dynamic")).lower()
    if scheme not in ("static", "dynamic"):
        _fail("FP8", f"activation_scheme {scheme!r}")
    skipped = [k for k in qc.get("ignored_layers") or [] if any(n.startswith(k) or k in n for n in names)]
    if skipped:
        _fail("FP8", f"ignored_layers {skipped} (layers left unquantized)")
    return QuantScheme("fp8", per_tensor_weight_scale=True, static_input_scale=scheme == "static")


def _ct_matches(pattern: str, name: str) -> bool:
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], name) is not None
    return pattern == name


def _compressed_tensors(qc: dict, names: list[str]) -> QuantScheme:
    ct = "compressed-tensors"
    for key in ("kv_cache_scheme", "sparsity_config", "transform_config"):
        if qc.get(key):
            _fail(ct, f"{key} (use --kv-cache-dtype for an FP8 KV cache)" if key == "kv_cache_scheme" else key)
    status = str(qc.get("quantization_status", "compressed")).lower()
    if status != "compressed":
        _fail(ct, f"quantization_status {status!r} (only compressed checkpoints)")
    groups = list((qc.get("config_groups") or {}).values())
    if len(groups) != 1:
        _fail(ct, f"{len(groups)} config groups (exactly one)")
    group = groups[0]
    formats = {str(f).lower() for f in (qc.get("format"), group.get("format")) if f and f != "mixed-precision"}
    if len(formats) != 1:
        _fail(ct, f"formats {sorted(formats)} (one of pack-quantized, float-quantized)")
    fmt = formats.pop()
    if sorted(group.get("targets") or []) != ["Linear"]:
        _fail(ct, f"targets {group.get('targets')} (only all Linear layers)")
    ignore = qc.get("ignore") or []
    if not any(_ct_matches(p, "lm_head") for p in ignore):
        _fail(ct, "a quantized lm_head (lm_head not in ignore)")
    skipped = [p for p in ignore if any(_ct_matches(p, n) for n in names)]
    if skipped:
        _fail(ct, f"ignore {skipped} (layers left unquantized)")
    w, acts = group.get("weights") or {}, group.get("input_activations")
    if group.get("output_activations"):
        _fail(ct, "output_activations quantization")
    if fmt == "pack-quantized":
        return _ct_w4a16(w, acts)
    if fmt == "float-quantized":
        return _ct_fp8(w, acts)
    _fail(ct, f"format {fmt!r} (only pack-quantized and float-quantized)")


def _ct_w4a16(w: dict, acts) -> QuantScheme:
    ct = "compressed-tensors pack-quantized"
    if w.get("type", "int") != "int":
        _fail(ct, f"weight type {w.get('type')!r}")
    _four_bit(ct, w.get("num_bits"))
    if acts:
        _fail(ct, "quantized input activations with int4 weights (only W4A16)")
    if w.get("dynamic"):
        _fail(ct, "dynamic weight quantization")
    if w.get("actorder") not in (None, "weight", "static"):
        _fail(ct, f"actorder {w.get('actorder')!r} (weight_g_idx)")
    strategy = w.get("strategy")
    if strategy == "channel":
        group = -1
    elif strategy == "group":
        group = _group(ct, w.get("group_size"), allow_row=False)
    else:
        _fail(ct, f"weight strategy {strategy!r} (only group and channel)")
    return QuantScheme("ct-pack", group_size=group, asymmetric=not w.get("symmetric", True))


def _ct_fp8(w: dict, acts) -> QuantScheme:
    ct = "compressed-tensors float-quantized"
    if w.get("type") != "float" or w.get("num_bits") != 8:
        _fail(ct, f"{w.get('num_bits')}-bit {w.get('type')} weights (only 8-bit float)")
    if w.get("strategy") not in ("channel", "tensor"):
        _fail(ct, f"weight strategy {w.get('strategy')!r} (only channel and tensor)")
    if not w.get("symmetric", True):
        _fail(ct, "asymmetric FP8 weights")
    if not acts:
        _fail(ct, "FP8 weights without quantized activations (W8A16)")
    if acts.get("type") != "float" or acts.get("num_bits") != 8:
        _fail(ct, f"{acts.get('num_bits')}-bit {acts.get('type')} input activations")
    static = not acts.get("dynamic", False)
    if static and acts.get("strategy") != "tensor":
        _fail(ct, f"static input activations of strategy {acts.get('strategy')!r} (only tensor)")
    if not acts.get("symmetric", True):
        _fail(ct, "asymmetric input activations")
    return QuantScheme("ct-fp8", per_tensor_weight_scale=w["strategy"] == "tensor", static_input_scale=static)
