"""Routes beside generation (issue 14): GET /v1/models/{id}, vLLM's /tokenize, /detokenize and /tokenizer_info
(answered by a tokenizer worker, with the code a generation request runs), and /v1/embeddings, which says that
the served model is generative. The field sets here are the ones services/gateway/openapi.py documents.
"""
from __future__ import annotations

import asyncio
import uuid

from aiohttp import web

from services.gateway.auth import API_KEY
from services.gateway.body_checks import bad as _bad
from services.gateway.body_checks import check_values, param_name
from services.gateway.body_checks import flag as _flag
from shared.codec import pack_ids, unpack_ids
from shared.errors import InvalidParameter, ModelNotFound, RequestTimeout
from shared.messages import RequestError, TokenizeReply, TokenizeRequest
from shared.sampling_params import INT32_MAX, SamplingParams
from shared.template_kwargs import check_template_kwargs

TOKENIZE_PROMPT_FIELDS = frozenset(("model", "prompt", "add_special_tokens", "return_token_strs"))
TOKENIZE_CHAT_FIELDS = frozenset(("model", "messages", "add_generation_prompt", "continue_final_message",
                                  "add_special_tokens", "chat_template_kwargs", "return_token_strs"))
DETOKENIZE_FIELDS = frozenset(("model", "tokens"))
TOKENIZER_TIMEOUT = 60.0  # seconds for a worker's answer when --request-timeout is 0


def _checked_body(body, fields: frozenset[str], served: str, depth: int) -> dict:
    if not isinstance(body, dict):
        raise InvalidParameter("the request body must be a JSON object")
    check_values(body, depth)
    for key, value in body.items():
        if key not in fields and value is not None:
            _bad(param_name(key), "is not supported")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        _bad("model", "must be a string")
    if model and model != served:
        raise ModelNotFound(model)
    return body


def tokenize_request(body, served: str, depth: int, rid: str, gateway_id: int) -> tuple[TokenizeRequest, bool]:
    """The worker's request for a /tokenize body (a prompt or a chat); also whether token strings are wanted."""
    chat = isinstance(body, dict) and body.get("messages") is not None
    body = _checked_body(body, TOKENIZE_CHAT_FIELDS if chat else TOKENIZE_PROMPT_FIELDS, served, depth)
    req = TokenizeRequest(rid, gateway_id, SamplingParams(), task="tokenize")
    if chat:
        messages = body["messages"]
        if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
            _bad("messages", "must be a non-empty array of objects")
        req.messages = messages
        req.add_generation_prompt = _flag(body, "add_generation_prompt", True)
        req.continue_final_message = _flag(body, "continue_final_message", False)
        if req.add_generation_prompt and req.continue_final_message:
            _bad("continue_final_message", "cannot be true while add_generation_prompt is true")
        if _flag(body, "add_special_tokens", False):  # a chat is encoded exactly as its template renders it
            _bad("add_special_tokens", "must be false for a chat (the template holds the special tokens)")
        kwargs = body.get("chat_template_kwargs")
        if kwargs is not None and not isinstance(kwargs, dict):
            _bad("chat_template_kwargs", "must be an object")
        req.chat_template_kwargs = check_template_kwargs(kwargs or {})
    else:
        prompt = body.get("prompt")
        if not isinstance(prompt, str):
            _bad("prompt", "must be a string (or send messages)")
        req.prompt = prompt
        req.add_special_tokens = _flag(body, "add_special_tokens", True)
    return req, _flag(body, "return_token_strs", False)


def detokenize_request(body, served: str, depth: int, rid: str, gateway_id: int) -> TokenizeRequest:
    body = _checked_body(body, DETOKENIZE_FIELDS, served, depth)
    tokens = body.get("tokens")
    if not isinstance(tokens, list) or not all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t <= INT32_MAX
                                               for t in tokens):
        _bad("tokens", f"must be an array of token ids (integers from 0 to {INT32_MAX})")
    if not tokens:
        return TokenizeRequest(rid, gateway_id, SamplingParams(), task="")  # nothing to ask a worker
    return TokenizeRequest(rid, gateway_id, SamplingParams(), prompt_token_ids=pack_ids(tokens), task="detokenize")


class VllmRoutes:
    """Bound to one Gateway: its settings, its served name, its pipeline client."""

    def __init__(self, gateway):
        self.gw = gateway

    def install(self, app: web.Application) -> None:
        app.router.add_get("/v1/models/{model_id:.+}", self.model)
        app.router.add_post("/tokenize", self.tokenize)
        app.router.add_post("/detokenize", self.detokenize)
        app.router.add_get("/tokenizer_info", self.tokenizer_info)
        app.router.add_post("/v1/embeddings", self.embeddings)

    async def model(self, request: web.Request):
        served = self.gw.router.find(request.match_info["model_id"])  # ModelNotFound: an OpenAI 404
        return web.json_response(served.card(self.gw.created))

    async def _ask(self, req: TokenizeRequest, client) -> TokenizeReply:
        """One round trip to a tokenizer worker of the model's group; its RequestError becomes this answer."""
        queue: asyncio.Queue = asyncio.Queue()
        client.submit(req, queue)
        timeout = self.gw.settings.request_timeout or TOKENIZER_TIMEOUT
        try:
            _, msg = await asyncio.wait_for(queue.get(), timeout)
        except asyncio.TimeoutError:
            raise RequestTimeout(f"no tokenizer worker answered within {timeout:g}s") from None
        finally:
            client.release(req.request_id, abort=False)
        if isinstance(msg, RequestError):
            raise msg.to_exception()
        if not isinstance(msg, TokenizeReply):
            raise InvalidParameter("the tokenizer worker could not answer this request")
        return msg

    async def _body(self, request: web.Request):
        from services.gateway.server import read_json  # the one body reader (size and depth bounds)

        self.gw.admission.admit(request.get(API_KEY, ""))
        body, error = await read_json(request, self.gw.settings.max_body_bytes)
        return body, error

    def _rid(self) -> str:
        return "tok-" + uuid.uuid4().hex

    async def tokenize(self, request: web.Request):
        body, error = await self._body(request)
        if error is not None:
            return error
        s = self.gw.settings
        served = self.gw.router.route(body)  # the model named (404 for one not served), aliases resolved
        req, want_strs = tokenize_request(body, served.name, s.max_json_depth, self._rid(), s.gateway_id)
        reply = await self._ask(req, served.client)
        ids = unpack_ids(reply.token_ids).tolist()
        return web.json_response({"count": len(ids), "max_model_len": reply.max_model_len, "tokens": ids,
                                  "token_strs": reply.token_strs if want_strs else None})

    async def detokenize(self, request: web.Request):
        body, error = await self._body(request)
        if error is not None:
            return error
        s = self.gw.settings
        served = self.gw.router.route(body)
        req = detokenize_request(body, served.name, s.max_json_depth, self._rid(), s.gateway_id)
        if not req.task:
            return web.json_response({"prompt": ""})
        return web.json_response({"prompt": (await self._ask(req, served.client)).text})

    async def tokenizer_info(self, request: web.Request):
        s = self.gw.settings
        name = request.query.get("model")
        served = self.gw.router.find(name) if name else self.gw.router.default
        reply = await self._ask(TokenizeRequest(self._rid(), s.gateway_id, SamplingParams(), task="tokenizer_info"),
                                served.client)
        return web.json_response(reply.info)

    async def embeddings(self, request: web.Request):
        raise InvalidParameter(f"the served model {self.gw.model!r} is a generative model: /v1/embeddings is not "
                               "available (use /v1/completions or /v1/chat/completions)", param="model",
                               code="model_not_embedding")
