"""One file per architecture; ModelConfig.architecture picks the class. Qwen2 is the Llama layout with biased
q, k and v projections only (ModelConfig.qkv_bias and o_proj_bias say so), so Llama's class builds it."""
from engine.models.llama import LlamaForCausalLM
from engine.models.qwen3 import Qwen3ForCausalLM

MODELS = {"llama": LlamaForCausalLM, "qwen2": LlamaForCausalLM, "qwen3": Qwen3ForCausalLM}
