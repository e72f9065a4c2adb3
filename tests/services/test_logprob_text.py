"""Issue 14: chat logprobs follow the text (stop strings, EOS); echo and prompt logprobs in the detokenizer."""
from services.detokenizer.service import Detokenizer
from shared.codec import pack_f32, pack_ids
from shared.messages import DetokRegister, PromptLogprobs, SeqDelta, SeqLogprobs, TokenBatch


def _lp(tok: int) -> SeqLogprobs:
    return SeqLogprobs(0, -0.5, pack_ids([tok]), pack_f32([-0.5]))


def _run(tokenizer, ids, finish, follow: bool, **reg):
    det = Detokenizer(tokenizer)
    det.register(DetokRegister("r", 0, 1, pack_ids([]), logprobs=0, logprobs_follow_text=follow, **reg))
    text, tokens = "", []
    for i, t in enumerate(ids):
        last = i == len(ids) - 1
        outs, _ = det.on_batch(TokenBatch([SeqDelta("r", 0, 0, pack_ids([t]), finish if last else None, [_lp(t)])]))
        for _, out in outs:
            for c in out.choices:
                text += c.text
                tokens += [lp.token for lp in c.logprobs]
                if c.finish_reason:
                    return text, tokens
    return text, tokens


def test_chat_logprobs_leave_out_eos_and_what_a_stop_string_cuts(tokenizer):
    ids = tokenizer.encode("The capital of France is Paris.", add_special_tokens=False)
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    text, tokens = _run(tokenizer, ids + [eos], "stop", follow=True)
    assert text == "The capital of France is Paris." and "".join(tokens) == text  # no EOS entry
    text, tokens = _run(tokenizer, ids + [eos], None, follow=True, stop=[" Paris"])
    assert text == "The capital of France is" and "".join(tokens) == text
    # completions keep every generated token's logprob, as vLLM's do (lm-eval counts on it)
    text, tokens = _run(tokenizer, ids + [eos], "stop", follow=False)
    assert len(tokens) == len(ids) + 1


def test_prompt_text_and_logprobs_come_with_the_first_output(tokenizer):
    prompt = tokenizer.encode("Hello there", add_special_tokens=False)
    det = Detokenizer(tokenizer)
    det.register(DetokRegister("r", 0, 1, pack_ids(prompt), logprobs=0, prompt_logprobs=1, echo=True))
    k = len(prompt) - 1
    scores = PromptLogprobs(0, 1, pack_f32([-1.0] * k), pack_ids([3] * k), pack_ids([5] * k), pack_f32([-0.1] * k))
    outs, _ = det.on_batch(TokenBatch([SeqDelta("r", 0, 0, pack_ids([13]), "length", prompt_logprobs=scores)]))
    (_, out), = outs
    assert out.prompt_text == "Hello there"
    assert [lp.token for lp in out.prompt_logprobs] == [tokenizer.decode([t]) for t in prompt]
    assert out.prompt_logprobs[0].logprob != out.prompt_logprobs[0].logprob  # NaN: no logprob for token 0
    assert [(lp.logprob, lp.rank) for lp in out.prompt_logprobs[1:]] == [(-1.0, 3)] * k


def test_tokenize_task_gives_the_ids_generation_sends(tokenizer):
    from services.tokenizer import tasks
    from services.tokenizer.prompts import PromptBuilder
    from shared.codec import unpack_ids
    from shared.messages import TokenizeRequest
    from shared.sampling_params import SamplingParams

    builder = PromptBuilder(tokenizer, 2048, len(tokenizer))
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello! How"}]
    for flags in ({}, {"add_generation_prompt": False, "continue_final_message": True}):
        gen = TokenizeRequest("g", 0, SamplingParams(), messages=messages, **flags)
        ask = TokenizeRequest("t", 0, SamplingParams(), messages=messages, task="tokenize", **flags)
        ids = unpack_ids(tasks.answer(builder, ask).token_ids).tolist()
        assert ids == unpack_ids(builder.prepare(gen).prompt_token_ids).tolist()
    assert tokenizer.decode(ids).endswith("Hello! How")  # continued: the turn is left open
    info = tasks.answer(builder, TokenizeRequest("i", 0, SamplingParams(), task="tokenizer_info")).info
    assert info["eos_token"] and "{%" in info["chat_template"]


def test_best_of_keeps_the_most_likely_samples_and_counts_all():
    from services.gateway.responses import Collector
    from shared.messages import ChoiceDelta, TokenLogprob

    c = Collector(3, 1)
    for i, v in enumerate([-3.0, -1.0, -2.0]):  # an echoed prompt's first token (NaN) before each
        c.add(0, i, ChoiceDelta(0, f"t{i}", "stop", 1, [TokenLogprob("a", float("nan")), TokenLogprob("b", v)]), 1, 0)
    c.keep_best(1, 3, 2)
    assert c.texts == ["t1", "t2"] and c.usage()["completion_tokens"] == 3
