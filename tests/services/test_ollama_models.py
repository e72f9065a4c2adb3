"""What /api/tags and /api/show say about a model (services/gateway/ollama_models.py), from its files only."""
from __future__ import annotations

import os

from engine.memory_plan import parameter_count
from fixtures.models import make_hf_model
from services.gateway.ollama_models import model_facts
from shared.settings import Settings


def test_a_safetensors_directory(tmp_path):
    model = make_hf_model("qwen2", tmp_path)
    facts = model_facts(Settings(model=str(tmp_path)), "tiny")
    assert facts.format == "safetensors" and facts.config.architecture == "qwen2"
    assert facts.parameters == parameter_count(facts.config) == sum(p.numel() for p in model.parameters())
    files = [f for f in os.listdir(tmp_path) if f.endswith((".safetensors", ".json"))]
    assert facts.size == sum(os.path.getsize(tmp_path / f) for f in files)
    card = facts.card()
    assert card["name"] == card["model"] == "tiny" and len(card["digest"]) == 64
    assert card["details"]["family"] == "qwen2" and card["details"]["parameter_size"].endswith("M")
    info = facts.model_info(256)
    assert info["qwen2.context_length"] == 256 and info["qwen2.block_count"] == 2


def test_a_model_that_cannot_be_read_is_listed_by_name(tmp_path):
    facts = model_facts(Settings(model=str(tmp_path / "gone")), "gone")
    assert facts.card()["name"] == "gone" and facts.config is None and facts.model_info(0) == {}
