"""Ollama's POST /api/pull: {"model": "org/name", "stream": true} fetches a model into this host's Hugging Face
cache (engine/hub.py), answered as Ollama answers: newline-delimited {"status": ...} lines ending with
{"status": "success"} (one such object with "stream": false), a failure as {"error": ...}. A model this server
serves, or one in a local cache, succeeds at once without the network; offline (HF_HUB_OFFLINE=1, --no-download)
fails before anything streams. Downloads are off unless the server runs with --allow-pull: any client could
otherwise fill the disk. The model is in the cache afterwards; serving it takes a restart with --model."""
from __future__ import annotations

import asyncio
import json

from aiohttp import web

from engine.hub import download, find_cached, why_no_download
from services.gateway.body_checks import load_json
from shared.errors import FerryError, HTTPError, InvalidParameter, ModelNotAvailable, PullNotAllowed
from shared.hub_names import is_hub_id

FIELDS = {"model", "name", "stream", "insecure"}  # "name": what older Ollama clients send


def ollama_error(err: FerryError) -> web.Response:
    return web.json_response({"error": err.message}, status=err.status)


def _line(obj: dict) -> bytes:
    return json.dumps(obj).encode() + b"\n"


def parse_pull(body) -> tuple[str, bool]:
    """(model, stream) from a pull request body; InvalidParameter naming what is wrong."""
    if not isinstance(body, dict):
        raise InvalidParameter("the request body must be a JSON object")
    unknown = sorted(set(body) - FIELDS)
    if unknown:
        raise InvalidParameter(f"{unknown[0]} is not supported", param=unknown[0])
    model = body.get("model", body.get("name"))
    if not isinstance(model, str) or not model:
        raise InvalidParameter("model must be a non-empty string", param="model")
    stream = body.get("stream", True)
    if not isinstance(stream, bool):
        raise InvalidParameter("stream must be a boolean", param="stream")
    if body.get("insecure", False) is not False:
        raise InvalidParameter("insecure is not supported (the hub is always reached over https)", param="insecure")
    return model, stream


class PullRoute:
    def __init__(self, gateway):
        self.gw = gateway
        self.lock = asyncio.Lock()  # one download at a time: pulls are rare and each can take the whole link

    async def pull(self, request: web.Request) -> web.StreamResponse:
        try:
            raw = await request.read()
            model, stream = parse_pull(load_json(raw))
            done = self._already_here(model)
        except FerryError as e:
            return ollama_error(e)
        except web.HTTPException as e:  # a body over the size limit, say
            return ollama_error(HTTPError(e.status, e.reason or "error"))
        if done:
            return await self._answer(request, stream, [{"status": "pulling manifest"}, {"status": "success"}])
        if not stream:
            try:
                await self._download(model)
            except FerryError as e:
                return ollama_error(e)
            return web.json_response({"status": "success"})
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        await resp.write(_line({"status": "pulling manifest"}))
        await resp.write(_line({"status": f"downloading {model} from the Hugging Face hub"}))
        try:
            await self._download(model)
        except FerryError as e:
            await resp.write(_line({"error": e.message}))
            return resp
        await resp.write(_line({"status": "success"}))
        return resp

    def _already_here(self, model: str) -> bool:
        """True when nothing needs fetching; raises what makes a download impossible (before anything streams)."""
        if model in self.gw.router.by_name:  # served already
            return True
        if not is_hub_id(model):
            raise InvalidParameter(f"model {model!r}: give a hub name org/name to pull", param="model")
        if find_cached(model):
            return True
        if not self.gw.settings.allow_pull:
            raise PullNotAllowed("pulling models is off on this server (start it with --allow-pull to allow it)")
        reason = why_no_download(self.gw.settings.download)
        if reason:
            raise ModelNotAvailable(f"cannot pull {model}: this machine is offline ({reason}); run `ferry pull "
                                    f"{model}` where the Hugging Face hub is reachable")
        return False

    async def _download(self, model: str):
        async with self.lock:
            await asyncio.get_running_loop().run_in_executor(None, download, model)

    @staticmethod
    async def _answer(request, stream: bool, lines: list[dict]) -> web.StreamResponse:
        if not stream:
            return web.json_response(lines[-1])
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        for line in lines:
            await resp.write(_line(line))
        return resp


def add_pull_route(app: web.Application, gateway) -> None:
    app.router.add_post("/api/pull", PullRoute(gateway).pull)
