"""Gateway: the OpenAI-compatible HTTP front (aiohttp on uvloop)."""
