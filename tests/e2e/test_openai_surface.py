"""Issue 14 against a real `ferry serve` with the default model: echo and prompt logprobs equal to a transformers
forward pass (streaming and not), lm-evaluation-harness's local-completions and local-chat-completions, the models,
tokenize and embeddings routes, chat logprobs that match the text, best_of, CORS on every route, and schemathesis
over /openapi.json (no 5xx, every error OpenAI-shaped)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import openai
import pytest
import torch
import yaml
from _pipeline import MODEL, get, post, serving

TASKS = os.path.join(os.path.dirname(__file__), "lm_eval_tasks")
PROMPT = "The capital of France is"
TOL = 1e-3
ORIGIN = "https://page.example"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with serving(tmp_path_factory.mktemp("surface"), "--allowed-origins", ORIGIN, "--max-n", "4",
                 "--max-prompts-per-request", "4", "--max-seqs-per-request", "8", "--max-model-len", "96") as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="none", timeout=60, max_retries=0)


@pytest.fixture(scope="module")
def hf(hf_default_model):
    torch.set_num_threads(1)  # the server's processes share the cores: more threads would only contend
    return hf_default_model


@pytest.fixture(scope="module")
def tokenizer():
    from engine.tokenizer import load_tokenizer
    from shared.settings import Settings

    return load_tokenizer(Settings())


def hf_logprobs(hf, ids: list[int]) -> torch.Tensor:
    """[len(ids), vocab] log-softmax of transformers' logits (fp32, CPU)."""
    with torch.no_grad():
        return torch.log_softmax(hf(torch.tensor([ids])).logits[0].float(), -1)


def tokenize(server, body: dict) -> list[int]:
    status, out = post(server.url + "/tokenize", body)
    assert status == 200, out
    assert out["count"] == len(out["tokens"])
    return out["tokens"]


# ---------------------------------------------------------------- must-hold 2: echo + logprobs + max_tokens 0


def _check_scored_prompt(lp, ids, ref, tokenizer, k):
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None  # the first token has no context
    assert lp.tokens == [tokenizer.decode([t]) for t in ids]
    for i in range(1, len(ids)):
        assert abs(lp.token_logprobs[i] - ref[i - 1, ids[i]].item()) <= TOL, i
        assert len(lp.top_logprobs[i]) >= 1 and len(lp.top_logprobs[i]) <= k + 1
        assert max(lp.top_logprobs[i].values()) == pytest.approx(ref[i - 1].max().item(), abs=TOL)
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(len(ids))]


def test_echo_scores_the_prompt_like_transformers(server, client, hf, tokenizer):
    ids = tokenize(server, {"prompt": PROMPT})
    ref = hf_logprobs(hf, ids)
    out = client.completions.create(model=MODEL, prompt=PROMPT, echo=True, logprobs=2, max_tokens=0)
    (choice,) = out.choices
    assert choice.text == PROMPT and out.usage.completion_tokens == 0 and out.usage.prompt_tokens == len(ids)
    _check_scored_prompt(choice.logprobs, ids, ref, tokenizer, 2)
    # streaming: the same, in chunks
    tokens, lps, text = [], [], ""
    for chunk in client.completions.create(model=MODEL, prompt=PROMPT, echo=True, logprobs=2, max_tokens=0,
                                           stream=True):
        for c in chunk.choices:
            text += c.text
            if c.logprobs is not None:
                tokens += c.logprobs.tokens
                lps += c.logprobs.token_logprobs
    assert text == PROMPT and tokens == choice.logprobs.tokens and lps == choice.logprobs.token_logprobs
    # token ids in, two tokens out: the prompt's tokens come first, then the completion's; vLLM's prompt_logprobs
    body = {"model": MODEL, "prompt": ids, "echo": True, "logprobs": 1, "max_tokens": 2, "temperature": 0,
            "prompt_logprobs": 1}
    status, out = post(server.url + "/v1/completions", body)
    assert status == 200, out
    (c,) = out["choices"]
    assert c["text"].startswith(PROMPT) and len(c["logprobs"]["tokens"]) == len(ids) + 2
    full = ids + tokenize(server, {"prompt": c["text"][len(PROMPT):], "add_special_tokens": False})
    assert c["logprobs"]["token_logprobs"][0] is None
    assert c["prompt_logprobs"][0] is None and len(c["prompt_logprobs"]) == len(ids)
    for i in range(1, len(ids)):
        entry = c["prompt_logprobs"][i][str(ids[i])]
        assert abs(entry["logprob"] - ref[i - 1, ids[i]].item()) <= TOL
        assert entry["rank"] == int((ref[i - 1] > ref[i - 1, ids[i]]).sum()) + 1
    assert len(full) >= len(ids)


# ---------------------------------------------------------------- must-hold 1: lm-evaluation-harness


def _task(name: str) -> dict:
    with open(os.path.join(TASKS, f"{name}.yaml")) as fh:
        cfg = yaml.safe_load(fh)
    cfg["dataset_kwargs"]["data_files"]["test"] = os.path.join(TASKS, f"{name}.jsonl")  # a local file
    return cfg


def _lm_eval(model: str, model_args: str, task: dict, **kw) -> dict:
    os.environ.update(HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    return simple_evaluate(model=model, model_args=model_args, tasks=[task], log_samples=True, limit=20,
                           bootstrap_iters=0, task_manager=TaskManager(include_defaults=False), **kw)


def _pairs(sample) -> list[tuple[str, str]]:
    """(context, continuation) of each loglikelihood request of one lm-eval sample."""
    args = sample["arguments"]
    args = list(args.values()) if isinstance(args, dict) else args
    return [(a["arg_0"], a["arg_1"]) if isinstance(a, dict) else tuple(a) for a in args]


def _reference_loglikelihoods(hf, tokenizer, pairs) -> list[float]:
    """transformers' sum of continuation logprobs, tokenized as lm-eval's _encode_pair does; one padded batch
    (right padding: a causal model's earlier positions do not see it)."""
    encoded = []
    for context, continuation in pairs:
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces:
            context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
        whole = tokenizer.encode(context + continuation, add_special_tokens=False)
        encoded.append((whole, len(tokenizer.encode(context, add_special_tokens=False))))
    width = max(len(w) for w, _ in encoded)
    batch = torch.tensor([w + [0] * (width - len(w)) for w, _ in encoded])
    with torch.no_grad():
        logp = torch.log_softmax(hf(batch).logits.float(), -1)
    return [sum(logp[b, i - 1, w[i]].item() for i in range(ctx, len(w))) for b, (w, ctx) in enumerate(encoded)]


def test_lm_eval_local_completions_matches_transformers(server, hf, tokenizer):
    args = f"model={MODEL},base_url={server.url}/v1/completions,tokenizer_backend=remote,batch_size=4,timeout=120"
    results = _lm_eval("local-completions", args, _task("ferry_mc"))
    samples = results["samples"]["ferry_mc"]
    assert len(samples) == 20
    assert 0.0 <= results["results"]["ferry_mc"]["acc,none"] <= 1.0
    for sample in samples:
        pairs = _pairs(sample)
        ours = [resp[0][0] for resp in sample["resps"]]
        assert len(ours) == len(pairs) == 4
        for (context, continuation), ll, expect in zip(pairs, ours, _reference_loglikelihoods(hf, tokenizer, pairs)):
            assert abs(ll - expect) <= TOL, (context, continuation, ll, expect)


def test_lm_eval_local_chat_completions_generates(server):
    args = f"model={MODEL},base_url={server.url}/v1/chat/completions,num_concurrent=1,timeout=60"
    results = _lm_eval("local-chat-completions", args, _task("ferry_gen"), apply_chat_template=True)
    samples = results["samples"]["ferry_gen"]
    assert len(samples) == 3
    assert all(isinstance(s["resps"][0][0], str) and s["resps"][0][0].strip() for s in samples)
    assert "exact_match,none" in results["results"]["ferry_gen"]


# ---------------------------------------------------------------- must-hold 4 and the other routes


def test_models_retrieve_and_tokenize_a_chat(server, client):
    model = client.models.retrieve(MODEL)
    assert model.id == MODEL and model.object == "model"
    with pytest.raises(openai.NotFoundError) as e:
        client.models.retrieve("no-such-model")
    assert e.value.body["code"] == "model_not_found"
    messages = [{"role": "user", "content": "Name a colour."}]
    ids = tokenize(server, {"messages": messages})
    # the ids the engine received, as its prompt logprobs name them (each entry holds the prompt token's id)
    status, out = post(server.url + "/v1/chat/completions",
                       {"messages": messages, "max_tokens": 1, "prompt_logprobs": 0, "temperature": 0})
    assert status == 200, out
    scored = out["choices"][0]["prompt_logprobs"]
    assert out["usage"]["prompt_tokens"] == len(ids) and len(scored) == len(ids)
    assert [int(next(iter(entry))) for entry in scored[1:]] == ids[1:]
    status, out = post(server.url + "/detokenize", {"tokens": ids})
    assert status == 200 and "Name a colour." in out["prompt"]
    status, info = get(server.url + "/tokenizer_info")
    info = json.loads(info)
    assert status == 200 and info["eos_token"] and info["chat_template"]
    status, out = post(server.url + "/v1/embeddings", {"model": MODEL, "input": "x"})
    assert status == 400 and "generative" in out["error"]["message"] and out["error"]["code"] == "model_not_embedding"


def test_chat_logprobs_match_the_text(server, client):
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    # EOS ends it: the text leaves the EOS out, so do the logprobs
    out = client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=40,
                                         logprobs=True, top_logprobs=1)
    c = out.choices[0]
    assert c.finish_reason == "stop"
    assert "".join(t.token for t in c.logprobs.content) == c.message.content
    # a stop string cuts the text: the logprobs end with it
    stop = " Paris" if " Paris" in c.message.content else c.message.content.split()[-1]
    out = client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=40,
                                         logprobs=True, stop=[stop])
    c2 = out.choices[0]
    assert c2.finish_reason == "stop" and stop not in c2.message.content
    pieces = "".join(t.token for t in c2.logprobs.content)
    assert pieces.startswith(c2.message.content) and len(pieces) - len(c2.message.content) < len(stop)
    # streamed: the same tokens
    streamed = []
    for chunk in client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=40,
                                                logprobs=True, stop=[stop], stream=True):
        for ch in chunk.choices:
            streamed += [t.token for t in (ch.logprobs.content if ch.logprobs and ch.logprobs.content else [])]
    assert streamed == [t.token for t in c2.logprobs.content]
    # continue_final_message (and echo): the answer goes on from the assistant's unfinished message
    start = "The capital of France is"
    body = {"messages": [*messages, {"role": "assistant", "content": start}], "continue_final_message": True,
            "add_generation_prompt": False, "echo": True, "temperature": 0, "max_tokens": 4}
    status, out = post(server.url + "/v1/chat/completions", body)
    assert status == 200, out
    assert out["choices"][0]["message"]["content"].startswith(start + " Paris")
    status, out = post(server.url + "/v1/chat/completions", {**body, "add_generation_prompt": True})
    assert status == 400 and out["error"]["param"] == "continue_final_message"


def test_best_of_and_suffix(server, client):
    out = client.completions.create(model=MODEL, prompt=PROMPT, n=1, max_tokens=4, temperature=1.0, seed=3,
                                    extra_body={"best_of": 3})
    assert len(out.choices) == 1 and out.choices[0].logprobs is None and out.usage.completion_tokens <= 12
    status, out = post(server.url + "/v1/completions", {"prompt": PROMPT, "n": 2, "best_of": 4, "max_tokens": 3,
                                                        "logprobs": 0, "seed": 1})
    assert status == 200 and len(out["choices"]) == 2
    sums = [sum(c["logprobs"]["token_logprobs"]) for c in out["choices"]]
    assert sums[0] >= sums[1]  # the best first
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL, prompt=PROMPT, suffix="!", max_tokens=2)
    assert e.value.body["param"] == "suffix"


def test_cors_preflight_on_every_documented_route(server):
    import http.client

    status, doc = get(server.url + "/openapi.json")
    doc = json.loads(doc)
    assert status == 200 and doc["openapi"].startswith("3.")
    new_routes = {"/v1/models/{model_id}", "/tokenize", "/detokenize", "/tokenizer_info", "/v1/embeddings"}
    assert new_routes <= set(doc["paths"])
    sdk_headers = "authorization, content-type, x-stainless-os, x-stainless-lang, x-stainless-retry-count"
    for path, ops in doc["paths"].items():
        for method in ops:
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
            conn.request("OPTIONS", path.replace("{model_id}", MODEL), headers={
                "Origin": ORIGIN, "Access-Control-Request-Method": method.upper(),
                "Access-Control-Request-Headers": sdk_headers})
            r = conn.getresponse()
            r.read()
            conn.close()
            assert r.status == 204, (path, r.status)
            assert r.getheader("Access-Control-Allow-Origin") == ORIGIN
            assert method.upper() in r.getheader("Access-Control-Allow-Methods")
            allowed = {h.strip().lower() for h in r.getheader("Access-Control-Allow-Headers").split(",")}
            assert {h.strip() for h in sdk_headers.split(",")} <= allowed


# ---------------------------------------------------------------- must-hold 3: schemathesis


def test_schemathesis_finds_no_5xx_and_only_openai_errors(server, tmp_path):
    cmd = [os.path.join(os.path.dirname(sys.executable), "schemathesis"), "run", server.url + "/openapi.json",
           "--checks", "not_a_server_error,response_schema_conformance,content_type_conformance",
           "--max-examples", "4", "--phases", "fuzzing", "--seed", "14", "--request-timeout", "120",
           "--no-shrink", "--generation-deterministic", "--suppress-health-check", "all"]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=180,  # its cache: not the repo
                          env={**os.environ, "SCHEMATHESIS_HOOKS": ""})
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
