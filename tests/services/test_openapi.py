"""Issue 14: /openapi.json cannot drift from what the gateway routes and validates."""
import pathlib
import re

from services.gateway.limits import RequestLimits
from services.gateway.openapi import ROUTES, openapi_document, undocumented_fields
from services.gateway.protocol import CHAT_FIELDS, COMPLETION_FIELDS

GATEWAY = pathlib.Path(__file__).resolve().parents[2] / "services" / "gateway"


def test_every_field_the_parsers_accept_has_a_schema():
    assert undocumented_fields() == set()
    doc = openapi_document(RequestLimits(max_n=7), "x")
    schemas = doc["components"]["schemas"]
    assert set(schemas["chat"]["properties"]) == CHAT_FIELDS
    assert set(schemas["completion"]["properties"]) == COMPLETION_FIELDS
    assert schemas["completion"]["additionalProperties"] is False  # unknown fields are 400s
    assert schemas["completion"]["properties"]["n"]["anyOf"][0]["maximum"] == 7  # this server's limits


def test_every_route_is_documented():
    added = set()
    for source in ("server.py", "vllm_routes.py"):
        text = (GATEWAY / source).read_text()
        added |= {(m, re.sub(r"\{(\w+)(:[^}]*)?\}", r"{\1}", p))
                  for m, p in re.findall(r'add_(get|post)\("([^"]+)"', text)}
    assert added == {(method, path) for method, path, *_ in ROUTES}
