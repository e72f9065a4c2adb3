"""Issue 18, must-hold 1: TP=2 (gloo, two runner processes fed the same plans) equals TP=1 for every quantized
format, so scales, zeros and g_idx follow their weights' shards. The tiny Llama splits q/k/v 2+1+1 heads per
rank and the row-parallel layers' input in halves: whole groups of 32 and whole int32 words; GPTQ's act order
scatters each group over both ranks (the padded regrouping).

Same greedy tokens for the formats whose arithmetic does not depend on the split (W4A16, FP8 with static
activation scales). With dynamic per-token activation scales (fp8-dynamic, --quantization fp8) a
row-parallel layer scales each token over its own half of the input, as every tensor-parallel FP8 engine
does, so the two differ by FP8's rounding: there the logits must agree within the FP8 tolerance of
test_quantized_formats, step by step, and where a token differs TP=1's two best logits must be that close.

One pair of processes runs every format in turn (the group forms once), which keeps this test quick."""
import dataclasses
import multiprocessing as mp

import torch

from fixtures.prompts import TP_PROMPTS as PROMPTS
from fixtures.quantized_models import tiny_quantized
from shared.codec import decode, encode
from shared.sampling_params import SamplingParams
from tests.engine.quantized_helpers import RecordingSampler, tiny_settings
from tests.engine.test_quantized_formats import FP8_TOLERANCE
from tests.engine.test_tensor_parallel import _free_port

GREEDY = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
TP_FORMATS = ("awq", "gptq-asym", "gptq-desc-act", "gptq-row", "ct-w4a16-asym", "ct-w4a16-row", "ct-fp8-channel",
              "ct-fp8-tensor-static",
              "fp8-static", "fp8-dynamic")
DYNAMIC = ("ct-fp8-channel", "fp8-dynamic", "fp8-online")


def _generate(llm) -> tuple[list, list]:
    """(each prompt's tokens, each step's logits [prompts, vocab]): both prompts prefill in the first step."""
    recorder = RecordingSampler(llm.runner.sampler)
    llm.runner.sampler = recorder
    tokens = [o[0] for o in llm.generate(PROMPTS, GREEDY)]
    return tokens, [step.clone() for step in recorder.logits]


def _rank_main(rank: int, all_settings, port: int, plans, results) -> None:
    import os

    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    torch.set_num_threads(1)
    from engine.llm import LLM
    from engine.model_runner import ModelRunner

    for settings in all_settings:
        runner = ModelRunner(settings, rank=rank, show_progress=False)
        if rank == 0:
            llm = LLM(settings, runner=runner)
            real_submit = runner.submit

            def submit_everywhere(plan, real_submit=real_submit):
                plans.put(encode(plan))  # what the scheduler's socket would carry to rank 1
                return real_submit(plan)

            runner.submit = submit_everywhere
            results.put(_generate(llm))
            plans.put(None)
        else:
            while (frame := plans.get()) is not None:
                assert runner.execute(decode(frame)) is None
    import torch.distributed as dist

    dist.barrier()
    dist.destroy_process_group()


def generate_tp2_each(all_settings) -> list:
    ctx = mp.get_context("spawn")
    plans, results = ctx.Queue(), ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_rank_main, args=(r, all_settings, port, plans, results)) for r in range(2)]
    for p in procs:
        p.start()
    try:
        out = [results.get(timeout=600) for _ in all_settings]
    finally:
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.kill()
    assert all(p.exitcode == 0 for p in procs)
    return out


def test_every_format_tp2_equals_tp1(tmp_path):
    from engine.llm import LLM

    dirs = [tiny_quantized("llama", fmt, tmp_path / fmt, prompts=PROMPTS)[0] for fmt in TP_FORMATS]
    source = str(tmp_path / TP_FORMATS[0] / "source")  # the unquantized model: --quantization fp8 quantizes it
    settings = [tiny_settings(d) for d in dirs] + [tiny_settings(source, quantization="fp8")]
    names = list(TP_FORMATS) + ["fp8-online"]
    tp1 = [_generate(LLM(s)) for s in settings]
    tp2 = generate_tp2_each([dataclasses.replace(s, tensor_parallel_size=2) for s in settings])
    for name, (tokens1, logits1), (tokens2, logits2) in zip(names, tp1, tp2):
        if name not in DYNAMIC:
            assert tokens2 == tokens1, f"{name}: TP=2 differs from TP=1"
            continue
        tolerance = FP8_TOLERANCE * max(step.abs().max().item() for step in logits1)
        for step, (one, two) in enumerate(zip(logits1, logits2)):
            assert (one - two).abs().max().item() <= tolerance, f"{name}: step {step} logits differ"
            picked1, picked2 = one.argmax(-1), two.argmax(-1)
            if not torch.equal(picked1, picked2):  # a near tie: the rest of the run has other inputs
                top2 = one.topk(2, dim=-1).values
                assert ((top2[:, 0] - top2[:, 1])[picked1 != picked2] <= 2 * tolerance).all(), name
                break
