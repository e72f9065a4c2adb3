"""The gateway's one place that knows which models it serves (shared/model_groups.py): a request's `model`, a
name or an alias, picks its group, and each group has its own EngineClient: its own sockets to its own
tokenizer workers, scheduler and detokenizer. /v1/models, /health (and the Ollama routes) list from here.

With one model there is one group, the gateway's own settings, and routing is one dict lookup per request."""
from __future__ import annotations

from dataclasses import dataclass

from services.gateway.engine_client import EngineClient
from services.gateway.metrics import Metrics
from services.gateway.tool_responses import parser_for
from shared.errors import ModelNotFound
from shared.model_groups import ModelGroup, model_groups


@dataclass(slots=True)
class Served:
    """One model this gateway serves: its group and the client that talks to the group's processes."""

    group: ModelGroup
    client: EngineClient
    _tool_parser: str | None = None

    @property
    def tool_parser(self) -> str:
        """The parser of this model's tool calls; "auto" reads its chat template, once, at the first request with
        tools (services.gateway.tool_responses.parser_for)."""
        if self._tool_parser is None:
            self._tool_parser = parser_for(self.group.settings)
        return self._tool_parser

    @property
    def name(self) -> str:
        return self.group.name

    def card(self, created: int) -> dict:
        """Its OpenAI model object (GET /v1/models)."""
        card = {"id": self.name, "object": "model", "created": created, "owned_by": "ferry",
                "root": self.group.settings.model}
        stats = self.client.stats
        if stats is not None:
            card["max_model_len"] = stats.max_model_len
        return card


class ModelRouter:
    def __init__(self, settings, metrics: Metrics, groups: list[ModelGroup] | None = None):
        # Each group's EngineClient updates a Metrics of its own; the gateway's (the first group's) exposes every
        # group's engine series merged (services.gateway.metrics_engine.MergedEngineSeries). Request series are
        # keyed by model in the gateway's one registry.
        self.served = [Served(g, EngineClient(g.settings, metrics if g.index == 0 else Metrics(
            settings.gateway_id, g.name, g.settings.max_model_len, settings.peer_timeout)))
            for g in (groups or model_groups(settings))]
        if len(self.served) > 1:
            metrics.export_engine_series_of([s.client.metrics for s in self.served[1:]])
        self.by_name = {name: s for s in self.served for name in s.group.names}
        self.default = self.served[0]  # answers requests that name no model

    @property
    def clients(self) -> list[EngineClient]:
        return [s.client for s in self.served]

    def find(self, name: str) -> Served:
        """The model of that name or alias; ModelNotFound (an OpenAI 404) for any other."""
        served = self.by_name.get(name)
        if served is None:
            raise ModelNotFound(name)
        return served

    def route(self, body) -> Served:
        """The model a request body asks for. An alias is rewritten to the served name, so the request is parsed
        (services.gateway.protocol.parse_request) and answered under it; a body without a usable `model` goes to
        the first model, and the parser judges the rest."""
        model = body.get("model") if isinstance(body, dict) else None
        if not isinstance(model, str) or not model:
            return self.default
        served = self.find(model)
        if model != served.name:
            body["model"] = served.name
        return served

    def down(self) -> dict[str, str]:
        """name -> why, for each model that cannot take requests now."""
        return {s.name: reason for s in self.served if (reason := s.client.not_ready_reason())}

    def in_flight(self) -> int:
        return sum(len(c.runs) for c in self.clients)

    def start(self):
        for c in self.clients:
            c.start()

    async def stop(self):
        for c in self.clients:
            await c.stop()
