"""What a model given by hub name looks like: `org/name` (Hugging Face or ModelScope), not a local path."""
from __future__ import annotations

import os
import re

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")


def is_hub_id(model: str) -> bool:
    """`org/name` that is not a path on this machine (a local directory of that name wins)."""
    return bool(_HUB_ID.match(model)) and ".." not in model and not os.path.exists(model)


def cache_folder_name(repo_id: str) -> str:
    """The Hugging Face cache's folder for a model repository: models--org--name."""
    return "models--" + repo_id.replace("/", "--")
