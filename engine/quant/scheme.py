"""The one typed description of how a model's linear layers are quantized, read once at start."""
from __future__ import annotations

from dataclasses import dataclass

W4A16_FORMATS = ("awq", "gptq", "ct-pack")  # 4-bit integer weights, 16-bit activations
FP8_FORMATS = ("fp8", "ct-fp8", "fp8-online")  # e4m3 weights (and activations)


class UnsupportedQuantization(ValueError):
    """A checkpoint or --quantization ferry cannot load exactly: raised at start, naming what is unsupported."""


@dataclass(frozen=True, slots=True)
class QuantScheme:
    """format: awq | gptq | ct-pack (W4A16); fp8 (llm-compressor/AutoFP8 `quant_method: fp8`) | ct-fp8
    (compressed-tensors float-quantized) | fp8-online (a 16/32-bit checkpoint quantized while it loads)."""
    format: str
    group_size: int = 0  # W4A16: input features per scale (the whole row for per-channel)
    asymmetric: bool = False  # W4A16: zero points stored (AWQ zero_point, GPTQ sym=false, CT symmetric=false)
    desc_act: bool = False  # GPTQ: g_idx reorders the input features
    gptq_v1_zeros: bool = True  # GPTQ checkpoint_format gptq (zeros stored minus one) rather than gptq_v2
    per_tensor_weight_scale: bool = False  # FP8: one weight scale per checkpoint tensor, not per output row
    static_input_scale: bool = False  # FP8: the checkpoint's input_scale rather than per-token dynamic scales

    @property
    def is_w4a16(self) -> bool:
        return self.format in W4A16_FORMATS

    @property
    def is_fp8(self) -> bool:
        return self.format in FP8_FORMATS

    @property
    def dynamic_fp8_activations(self) -> bool:
        """FP8 with per-token activation scales: the kernel before a projection may quantize its input (the RMSNorm,
        SiLU-and-mul: kernels.fp8_linear.Fp8Activation)."""
        return self.is_fp8 and not self.static_input_scale

    def describe(self) -> str:
        if self.is_w4a16:
            return (f"{self.format} 4-bit, group {self.group_size}, {'asymmetric' if self.asymmetric else 'symmetric'}"
                    + (", desc_act" if self.desc_act else ""))
        weights = "per-tensor" if self.per_tensor_weight_scale else "per-channel"
        acts = "static" if self.static_input_scale else "dynamic per-token"
        return f"{self.format} e4m3, {weights} weight scales, {acts} activation scales"
