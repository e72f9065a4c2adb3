"""The gateway's HTTP routes: OpenAI-compatible generation, models, health, metrics, version."""
from __future__ import annotations

import asyncio
import logging
import time
from contextlib import suppress

from aiohttp import web

from services.gateway import responses as R
from services.gateway.admission import Admission
from services.gateway.auth import API_KEY, api_key_middleware, load_keys, open_paths
from services.gateway.body_checks import load_json
from services.gateway.coalesce import merge_deltas, take_queued
from services.gateway.connections import ConnectionGuard
from services.gateway.cors import Cors
from services.gateway.limits import RequestLimits
from services.gateway.metrics import Metrics
from services.gateway.metrics_requests import RequestObserver
from services.gateway.model_router import ModelRouter
from services.gateway.ollama import OllamaRoutes, ollama_error_shape
from services.gateway.openapi import openapi_document
from services.gateway.protocol import ParsedRequest, parse_request
from services.gateway.pull_route import add_pull_route
from services.gateway.request_log import OBSERVER, RequestLog, engine_request_id
from services.gateway.tool_responses import ToolStream, apply_to_response
from services.gateway.vllm_routes import VllmRoutes
from shared.errors import FerryError, HTTPError, InvalidParameter, NotReady, RequestTimeout
from shared.messages import ChoiceDelta, RequestError, RequestOutput, TokenizeRequest
from shared.model_groups import model_groups

log = logging.getLogger("ferry.gateway")
VERSION = "0.1.0"


def error_response(err: FerryError) -> web.Response:
    return web.json_response(err.to_dict(), status=err.status, headers=getattr(err, "headers", None))


@web.middleware
async def openai_errors(request: web.Request, handler):
    """Every failure leaves as an OpenAI-shaped error body with a meaningful status."""
    try:
        return await handler(request)
    except FerryError as e:
        return error_response(e)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        return error_response(HTTPError(e.status, e.reason or "error", code=str(e.status)))
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception as e:  # a bug: say so, keep serving
        log.exception("unhandled error on %s", request.path)
        return error_response(FerryError(f"internal error: {e}"))


def _too_large(max_bytes: int) -> web.Response:
    return error_response(HTTPError(413, f"the request body exceeds {max_bytes} bytes", code="body_too_large"))


async def read_json(request: web.Request, max_bytes: int):
    if request.content_length is not None and request.content_length > max_bytes:
        return None, _too_large(max_bytes)
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return None, _too_large(max_bytes)
    try:
        return load_json(raw), None  # depth-bounded: a body nested past the stack is a 400
    except InvalidParameter as e:
        return None, error_response(e)


class Gateway:
    def __init__(self, settings):
        self.settings = settings
        self.limits = RequestLimits.of(settings)  # once: the caps every request is parsed against
        groups = model_groups(settings)  # one, unless several models are served (shared/model_groups.py)
        first = groups[0]
        self.metrics = Metrics(settings.gateway_id, first.name, first.settings.max_model_len, settings.peer_timeout)
        self.router = ModelRouter(settings, self.metrics, groups)  # the models served: name or alias -> group, client
        self.client = self.router.default.client  # the first model's (the only one, unless --models-file ...)
        self.model = self.router.default.name
        self.request_log = RequestLog(self.model, self.metrics.request_series)
        self.created = int(time.time())
        self.admission = Admission(settings, self.client, self.router.clients[1:])
        self.guard = ConnectionGuard(settings.http_read_timeout, settings.max_connections)
        self.cors = Cors(settings.allowed_origins)
        self.api_keys = load_keys(settings)
        for served in self.router.served:  # a named --tool-call-parser is checked at start; "auto" at first use
            if served.group.settings.tool_call_parser != "auto":
                _ = served.tool_parser  # raises for an unknown parser name

    def app(self) -> web.Application:
        # Outermost first: the connection guard sees everything; CORS answers preflights before the key check.
        edge = [self.guard.middleware, self.request_log.middleware] + ([self.cors.middleware] if self.cors.enabled
                                                                       else [])
        edge.append(ollama_error_shape)  # /api/ errors as {"error": "..."}, the auth check's too
        edge.append(api_key_middleware(self.api_keys, open_paths(self.settings)))
        app = web.Application(client_max_size=self.settings.max_body_bytes, middlewares=[*edge, openai_errors])
        self.cors.install(app)
        self.request_log.install(app)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/health", self.health)
        app.router.add_get("/metrics", self.prometheus)
        app.router.add_get("/version", self.version)
        add_pull_route(app, self)
        OllamaRoutes(self).install(app)
        VllmRoutes(self).install(app)  # issue 14: /v1/models/{id}, /tokenize, /detokenize, ...
        app.router.add_get("/openapi.json", self.openapi)
        app.on_startup.append(self._start)
        app.on_cleanup.append(self._stop)
        return app

    async def _start(self, app):
        self.router.start()
        self.guard.start()

    async def _stop(self, app):
        await self.guard.stop()
        await self.router.stop()

    async def models(self, request):
        return web.json_response({"object": "list", "data": [s.card(self.created) for s in self.router.served]})

    async def openapi(self, request):
        return web.json_response(openapi_document(self.limits, VERSION))

    async def health(self, request):
        """503 when no model can answer (the one model, or the one ?model=NAME asks about); with several, 200
        while any can, and the body says which are down."""
        only = request.query.get("model")
        served = [self.router.find(only)] if only else self.router.served
        down = {s.name: reason for s in served if (reason := s.client.not_ready_reason())}
        if len(down) == len(served):
            reason = "; ".join(down.values()) if len(down) == 1 else "; ".join(f"{n}: {r}" for n, r in down.items())
            return error_response(NotReady(reason, code="not_ready"))
        reason = self.admission.overloaded_reason()
        if reason:  # 503 so that load balancers send new requests elsewhere
            return error_response(NotReady(reason, code="overloaded"))
        if len(self.router.served) == 1:
            return web.json_response({"status": "ok"})
        return web.json_response({"status": "degraded" if down else "ok",
                                  "models": {s.name: down.get(s.name, "ok") for s in served}})

    async def prometheus(self, request):
        self.metrics.in_flight.set(self.router.in_flight())
        return web.Response(body=self.metrics.exposition(), content_type="text/plain", charset="utf-8",
                            headers={"X-Content-Type-Options": "nosniff"})

    async def version(self, request):
        return web.json_response({"version": VERSION})

    # ------------------------------------------------------------------ generation

    async def chat(self, request):
        return await self._generate(request, chat=True)

    async def completions(self, request):
        return await self._generate(request, chat=False)

    async def _generate(self, request: web.Request, chat: bool, call=None):
        """call: a request of another API that ferry translates (services.gateway.ollama.OllamaCall); None: OpenAI."""
        endpoint = call.endpoint if call else "chat" if chat else "completions"
        key = request.get(API_KEY, "")
        try:
            self.admission.admit(key)  # before the body is read: an overloaded server says so at once
        except FerryError as e:
            self.metrics.requests.labels(endpoint, str(e.status)).inc()
            raise
        body, error = await read_json(request, self.settings.max_body_bytes)
        if error is not None:
            self.metrics.requests.labels(endpoint, str(error.status)).inc()
            return error
        try:
            if call:  # another API's body (Ollama's): it resolves its model through the router itself
                parsed = call.parse(body)
                served = call.served
            else:
                served = self.router.route(body)  # the model asked for (404 for one not served), aliases resolved
                parsed = parse_request(body, chat, served.name, self.limits)
        except FerryError as e:
            self.metrics.requests.labels(endpoint, str(e.status)).inc()
            raise
        if isinstance(parsed, web.StreamResponse):  # answered without the engine (Ollama's "load the model")
            self.metrics.requests.labels(endpoint, str(parsed.status)).inc()
            return parsed
        rid = engine_request_id(request, "chatcmpl-" if parsed.chat else "cmpl-")
        run = Run(self, rid, parsed, key, served.client)
        request[OBSERVER] = run.obs
        try:
            run.submit()
            response = await (call.answer(run, request) if call else run.answer(request))
        except FerryError as e:
            self.metrics.requests.labels(endpoint, str(e.status)).inc()
            raise
        finally:
            run.release()
        self.metrics.requests.labels(endpoint, str(response.status)).inc()
        return response


class Run:
    """One HTTP generation request in flight: its sub-requests (one per prompt), outputs, answer."""

    def __init__(self, gw: Gateway, rid: str, parsed: ParsedRequest, key: str = "", client=None):
        self.gw, self.rid, self.p, self.key = gw, rid, parsed, key
        self.client = client or gw.client  # its model's group (services.gateway.model_router.ModelRouter.route)
        self.deadline: asyncio.TimerHandle | None = None
        self.n = parsed.params.n
        num_prompts = 1 if parsed.chat else len(parsed.prompts)
        self.sub_ids = [rid] if num_prompts == 1 else [f"{rid}-{i}" for i in range(num_prompts)]
        self.collector = R.Collector(self.n * num_prompts, num_prompts)
        self.queue: asyncio.Queue = asyncio.Queue()
        self.created = int(time.time())
        self.start = time.monotonic()
        self.obs = RequestObserver(gw.metrics.request_series.series(parsed.model), num_prompts, self.n,
                                   parsed.params.max_tokens)
        self._streamed: set[int] = set()  # choices whose first chunk went out
        self._error: RequestError | None = None  # met while taking a backlog (next_batch): raised next

    def submit(self):
        for i, sub in enumerate(self.sub_ids):
            req = TokenizeRequest(sub, self.gw.settings.gateway_id, self.p.params, grammar_param=self.p.grammar_param)
            if self.p.chat:
                req.messages = self.p.messages
                req.add_generation_prompt = self.p.add_generation_prompt
                req.chat_template_kwargs = self.p.chat_template_kwargs
                req.continue_final_message = self.p.extras.continue_final_message
                if self.p.tools is not None and self.p.tools.parses:
                    req.tools = self.p.tools.tools
            elif isinstance(self.p.prompts[i], str):
                req.prompt = self.p.prompts[i]
            else:
                req.prompt_token_ids = self.p.prompts[i]
            try:
                self.client.submit(req, self.queue, i)
            except (ValueError, TypeError, OverflowError) as e:  # the parser's checks should make this unreachable
                raise InvalidParameter(f"the request cannot be encoded: {e}", code="unencodable") from None
        timeout = self.gw.settings.request_timeout
        if timeout > 0:  # one timer per request, nothing per token
            self.deadline = asyncio.get_running_loop().call_later(timeout, self._expire, timeout)

    def _expire(self, timeout: float):
        """Past --request-timeout: the next output the answer waits for is this error; release() then aborts."""
        err = RequestTimeout(f"The request took longer than the server's request timeout ({timeout:g}s).")
        self.queue.put_nowait((0, RequestError.of(self.rid, self.gw.settings.gateway_id, err)))

    def release(self):
        if self.deadline is not None:
            self.deadline.cancel()
        for sub in self.sub_ids:
            self.client.release(sub, abort=not self.collector.done)
        self.obs.finish(self.collector)

    async def next(self):
        """(prompt index, RequestOutput) or raises the request's error (a FerryError)."""
        if self._error is not None:
            raise self._error.to_exception()
        index, msg = await self.queue.get()
        self.obs.output(index, msg)
        if isinstance(msg, RequestError):
            raise msg.to_exception()
        return index, msg

    async def next_batch(self) -> list:
        """The next output and those already queued behind it (up to an error, which the next call raises)."""
        batch = [await self.next()]
        self._error = take_queued(self.queue, self.obs.output, batch)
        return batch

    def _absorb(self, index: int, out: RequestOutput) -> list[tuple[int, object, int]]:
        """Fold one output into the collector; returns (choice index, delta, text offset before)."""
        placed = []
        if out.prompt_text is not None or out.prompt_logprobs is not None:
            self.collector.add_prompt(index, out)
        for d in out.choices:
            ci = index * self.n + d.index
            if not 0 <= ci < len(self.collector.texts):
                continue
            if not self.collector.started[ci]:
                self.collector.started[ci] = True
                d = self._echoed(index, d)
            placed.append((ci, d, len(self.collector.texts[ci])))
            self.collector.add(index, ci, d, out.prompt_tokens, out.cached_tokens)
        return placed

    def _echoed(self, index: int, d: ChoiceDelta) -> ChoiceDelta:
        """A choice's first delta with what echo puts before it: the prompt (and its tokens' logprobs), or for a
        chat the final assistant message that the answer continues."""
        x = self.p.extras
        if not x.echo:
            return d
        if self.p.chat:
            return ChoiceDelta(d.index, x.echo_text + d.text, d.finish_reason, d.completion_tokens, d.logprobs,
                               d.token_ids)
        known = self.collector.prompt_outputs[index]
        prompt = self.p.prompts[index]
        text = prompt if isinstance(prompt, str) else (known.prompt_text if known is not None else "") or ""
        lps = known.prompt_logprobs if known is not None and self.p.params.logprobs is not None else None
        return ChoiceDelta(d.index, text + d.text, d.finish_reason, d.completion_tokens, (lps or []) + d.logprobs,
                           d.token_ids)

    @property
    def shown_logprobs(self) -> int | None:
        return self.p.params.logprobs if self.p.extras.show_logprobs else None

    def _prompt_logprobs(self, choices: list[dict], first_only: set[int] | None = None) -> None:
        """vLLM's prompt_logprobs on each choice (streaming: on each choice's first chunk only)."""
        k = self.p.extras.prompt_logprobs
        if k is None:
            return
        per_prompt = self.p.extras.returned_n if not self.p.stream else self.n
        for ch in choices:
            if first_only is None or ch["index"] in first_only:
                ch["prompt_logprobs"] = R.prompt_logprobs_of(self.collector, ch["index"] // per_prompt, k)

    def _finished(self):
        usage = self.collector.usage()
        m = self.gw.metrics
        m.latency.observe(time.monotonic() - self.start)
        self.gw.admission.charge_tokens(self.key, usage["prompt_tokens"] + usage["completion_tokens"])

    async def collect(self, item) -> None:
        """Fold outputs, from `item` on, until every choice has finished (a non-streamed answer)."""
        while True:
            self._absorb(*item)
            if self.collector.done:
                break
            item = await self.next()
        self._finished()

    async def answer(self, request: web.Request) -> web.StreamResponse:
        # Wait for the first output before answering, so that a rejected prompt gets a plain 4xx.
        first = await self.next()
        if self.p.stream:
            return await self._stream(request, first)
        await self.collect(first)
        x = self.p.extras
        if x.best_of is not None and x.best_of > x.returned_n:
            self.collector.keep_best(len(self.sub_ids), self.n, x.returned_n)
        shape = R.chat_response if self.p.chat else R.completion_response
        body = shape(self.rid, self.created, self.p.model, self.collector, self.shown_logprobs, self.p.top_logprobs)
        self._prompt_logprobs(body["choices"])
        if self.p.tools is not None and self.p.tools.parses:
            body = apply_to_response(body, self.p.tools, self.gw.router.find(self.p.model).tool_parser)
        return web.json_response(body)

    async def _stream(self, request: web.Request, first) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        with suppress(ConnectionResetError):  # the client left mid-stream: release() aborts its sequences
            await self._write_stream(resp, first)
        return resp

    async def _write_stream(self, resp: web.StreamResponse, first) -> None:
        p, chat = self.p, self.p.chat
        chunk = R.chat_chunk if chat else R.completion_chunk
        if chat:
            roles = R.chat_role_choices(len(self.collector.texts))
            await resp.write(R.sse(chunk(self.rid, self.created, p.model, roles)))
        tool_stream = (ToolStream(p.tools, self.gw.router.find(p.model).tool_parser, len(self.collector.texts))
                       if p.tools is not None and p.tools.parses else None)
        batch = [first]
        try:
            while True:
                choices, firsts = [], set()
                placed = [entry for item in batch for entry in self._absorb(*item)]
                for ci, d, offset in merge_deltas(placed):
                    if tool_stream is not None:
                        choices.extend(tool_stream.on_delta(ci, self.collector.texts[ci], d.finish_reason))
                        continue
                    if not d.text and d.finish_reason is None:
                        continue  # nothing to show yet (a held-back stop string prefix, a partial character)
                    if ci not in self._streamed:
                        self._streamed.add(ci)
                        firsts.add(ci)
                    if chat:
                        choices.append(R.chat_delta_choice(ci, d, p.params.logprobs, p.top_logprobs))
                    else:
                        choices.append(R.completion_delta_choice(ci, d, p.params.logprobs, p.top_logprobs, offset))
                if choices:
                    self._prompt_logprobs(choices, firsts)
                    await resp.write(R.sse(chunk(self.rid, self.created, p.model, choices)))
                if self.collector.done:
                    break
                batch = await self.next_batch()
        except FerryError as e:  # the pipeline failed the request (Run.next)
            await resp.write(R.sse(e.to_dict()))
            await resp.write(R.sse("[DONE]"))
            return
        self._finished()
        if p.include_usage:
            await resp.write(R.sse(chunk(self.rid, self.created, p.model, [], self.collector.usage())))
        await resp.write(R.sse("[DONE]"))

