"""docs/glossary.md names every config field of both trainers (a new field without a row fails here)."""

import dataclasses
from pathlib import Path

import pytest

from ppox.llm.config import LLMPPOConfig
from ppox.rl.config import PPOConfig

GLOSSARY = (Path(__file__).parent.parent / "docs" / "glossary.md").read_text()


@pytest.mark.parametrize("config", [PPOConfig, LLMPPOConfig])
def test_every_config_field_has_a_glossary_row(config):
    missing = [f.name for f in dataclasses.fields(config) if f"`{f.name}`" not in GLOSSARY]
    assert not missing, f"add these {config.__name__} fields to docs/glossary.md: {missing}"
