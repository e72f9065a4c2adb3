"""Ollama's API on the gateway: /api/chat, /api/generate (newline-delimited JSON), /api/tags, /api/show, /api/ps,
/api/version.

A generation request is translated into the OpenAI request the other routes build
(services.gateway.ollama_protocol.parse_ollama) and runs through the same Gateway._generate: admission, limits,
timeouts, metrics and the engine client are those of /v1. Only the answer's shape is Ollama's: chunks
{"model", "created_at", "message" | "response", "done": false}, then one with "done": true, "done_reason" and the
timings in nanoseconds; an error after the answer began is one {"error": ...} line. Every error on /api/ is
Ollama's {"error": "message"} with the status the OpenAI routes would give (ollama_error_shape).
"""
from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime, timezone

from aiohttp import web

from services.gateway.ollama_models import ModelFacts, model_facts
from services.gateway.ollama_protocol import OllamaRequest, parse_ollama, resolve_model
from services.gateway.tool_responses import parse_choice
from shared.errors import FerryError, InvalidParameter

NDJSON = "application/x-ndjson"


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def ndjson(obj) -> bytes:
    return (json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n").encode()


def _ns(seconds: float) -> int:
    return max(0, int(seconds * 1e9))


@web.middleware
async def ollama_error_shape(request: web.Request, handler):
    """/api/ errors as Ollama's clients read them: {"error": "message"}, same status and headers."""
    response = await handler(request)
    if (response.status < 400 or not request.path.startswith("/api/") or not isinstance(response, web.Response)
            or response.content_type != "application/json" or not response.body):
        return response
    try:
        error = json.loads(response.body).get("error")
    except (ValueError, AttributeError):
        return response
    if not isinstance(error, dict):
        return response
    headers = {k: v for k, v in response.headers.items() if k.lower() not in ("content-type", "content-length")}
    return web.json_response({"error": error.get("message") or "error"}, status=response.status, headers=headers)


class OllamaCall:
    """One /api/chat or /api/generate request: how Gateway._generate parses and answers it."""

    def __init__(self, routes: "OllamaRoutes", chat: bool):
        self.routes, self.chat = routes, chat
        self.endpoint = "api_chat" if chat else "api_generate"
        self.arrived = time.monotonic()
        self.req: OllamaRequest | None = None
        self.served = None

    def parse(self, body):
        gw = self.routes.gw
        self.req = req = parse_ollama(body, self.chat, list(gw.router.by_name), gw.limits)  # names and aliases
        self.served = gw.router.find(req.model)  # its model group (services.gateway.model_router)
        stats = self.served.client.stats
        if req.num_ctx is not None and stats is not None and stats.max_model_len and req.num_ctx > stats.max_model_len:
            raise InvalidParameter(f"options.num_ctx {req.num_ctx} exceeds this server's context of "
                                   f"{stats.max_model_len} tokens (ferry sizes it at start: --max-model-len)",
                                   param="options.num_ctx")
        if req.parsed is None:  # no prompt: Ollama's way to load a model, which ferry has done at start
            return web.json_response(self._chunk("", done=True, done_reason="load"))
        return req.parsed

    def _chunk(self, text: str, done: bool = False, **extra) -> dict:
        out = {"model": self.req.model, "created_at": now_iso()}
        if self.chat:
            out["message"] = {"role": "assistant", "content": text}
        else:
            out["response"] = text
        out["done"] = done
        out.update(extra)
        return out

    def _final(self, run, text: str) -> dict:
        end = time.monotonic()
        first = min((t for t in run.obs.first if t), default=end)  # the first output (metrics_requests)
        usage = run.collector.usage()
        reason = run.collector.finish[0]
        return self._chunk(text, done=True, done_reason=reason, total_duration=_ns(end - self.arrived),
                           load_duration=_ns(run.start - self.arrived),  # the model is loaded once, at start
                           prompt_eval_count=usage["prompt_tokens"], prompt_eval_duration=_ns(first - run.start),
                           eval_count=usage["completion_tokens"], eval_duration=_ns(end - first))

    def _tool_calls(self, run, text: str) -> tuple[str, list[dict]]:
        """The text's tool calls in Ollama's shape (arguments an object), and the content left."""
        tools = run.p.tools
        if tools is None or not tools.parses:
            return text, []
        content, calls = parse_choice(text, tools, self.served.tool_parser)
        return content or "", [{"function": {"name": c.name, "arguments": json.loads(c.arguments)}} for c in calls]

    def _final_with_calls(self, run, text: str) -> dict:
        content, calls = self._tool_calls(run, text)
        final = self._final(run, content)
        if calls:
            final["message"]["tool_calls"] = calls
        return final

    async def answer(self, run, request: web.Request) -> web.StreamResponse:
        item = await run.next()  # before answering, so that a rejected prompt gets a plain 4xx
        # With tools the text may hold a call: it is parsed once whole (Ollama sends a call as one chunk too).
        holds = run.p.tools is not None and run.p.tools.parses
        if not run.p.stream or holds:
            await run.collect(item)
            if not run.p.stream:
                return web.json_response(self._final_with_calls(run, run.collector.texts[0]))
            resp = web.StreamResponse(headers={"Content-Type": NDJSON, "Cache-Control": "no-cache"})
            await resp.prepare(request)
            content, calls = self._tool_calls(run, run.collector.texts[0])
            chunk = self._chunk(content)
            if calls:
                chunk["message"]["tool_calls"] = calls
            await resp.write(ndjson(chunk))
            await resp.write(ndjson(self._final(run, "")))
            return resp
        resp = web.StreamResponse(headers={"Content-Type": NDJSON, "Cache-Control": "no-cache"})
        await resp.prepare(request)
        try:
            while True:
                for _, d, _ in run._absorb(*item):
                    if d.text:
                        await resp.write(ndjson(self._chunk(d.text)))
                if run.collector.done:
                    break
                item = await run.next()
        except FerryError as e:  # the pipeline failed the request (Run.next): one error line ends the answer
            await resp.write(ndjson({"error": e.message}))
            return resp
        run._finished()
        await resp.write(ndjson(self._final(run, "")))
        return resp


class OllamaRoutes:
    def __init__(self, gw):
        self.gw = gw
        self._facts: dict[str, asyncio.Future] = {}

    def install(self, app: web.Application) -> None:
        app.router.add_post("/api/chat", self.chat)
        app.router.add_post("/api/generate", self.generate)
        app.router.add_get("/api/tags", self.tags)
        app.router.add_post("/api/show", self.show)
        app.router.add_get("/api/ps", self.ps)
        app.router.add_get("/api/version", self.version)

    def served(self) -> list[str]:
        """The models this gateway serves, from the one place /v1/models reads too (ModelRouter)."""
        return [s.name for s in self.gw.router.served]

    async def facts(self, name: str) -> ModelFacts:
        if name not in self._facts:  # once, off the loop; concurrent callers share the one read
            loop = asyncio.get_running_loop()
            self._facts[name] = loop.run_in_executor(None, model_facts, self.gw.router.find(name).group.settings, name)
        return await self._facts[name]

    async def chat(self, request):
        return await self.gw._generate(request, chat=True, call=OllamaCall(self, chat=True))

    async def generate(self, request):
        return await self.gw._generate(request, chat=False, call=OllamaCall(self, chat=False))

    async def tags(self, request):
        return web.json_response({"models": [(await self.facts(n)).card() for n in self.served()]})

    def _context_length(self, facts: ModelFacts) -> int:
        stats = self.gw.router.find(facts.name).client.stats
        if stats is not None and stats.max_model_len:
            return stats.max_model_len
        return facts.config.max_model_len if facts.config else 0

    async def show(self, request):
        from services.gateway.server import read_json

        body, error = await read_json(request, self.gw.settings.max_body_bytes)
        if error is not None:
            return error
        if not isinstance(body, dict):
            raise InvalidParameter("the request body must be a JSON object")
        for key, value in body.items():
            if key not in ("model", "name", "verbose") and value is not None:
                raise InvalidParameter(f"{key} is not supported", param=key)
        requested = resolve_model(body.get("model") or body.get("name"), list(self.gw.router.by_name))
        name = self.gw.router.find(requested).name
        facts = await self.facts(name)
        return web.json_response({
            "modelfile": f"# served by ferry\nFROM {facts.path or name}\n", "parameters": "",
            "details": facts.details(), "model_info": facts.model_info(self._context_length(facts)),
            "capabilities": ["completion"], "modified_at": facts.modified_at or None})

    async def ps(self, request):
        """The models loaded: those whose engine is up (ferry loads at start and never unloads)."""
        models = []
        for name in self.served():
            if self.gw.router.find(name).client.not_ready_reason():
                continue
            facts = await self.facts(name)
            models.append({**facts.card(), "context_length": self._context_length(facts)})
        return web.json_response({"models": models})

    async def version(self, request):
        from services.gateway.server import VERSION

        return web.json_response({"version": VERSION})
