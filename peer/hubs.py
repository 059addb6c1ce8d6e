"""The hubs a repo can come from, declared once (DESIGN.md sections 2 and 8).

Hubs are namespaces: the same id can name different repos on two hubs. Hugging Face repos are
served at the root of a mirror's API, the others under `/hubs/<id>/`.
"""

from __future__ import annotations

from .errors import BadRequest

HUGGINGFACE = "huggingface"
MODELSCOPE = "modelscope"
KAGGLE = "kaggle"
#: every hub, the default first
HUBS = (HUGGINGFACE, MODELSCOPE, KAGGLE)
DEFAULT = HUGGINGFACE
#: hubs served under /hubs/<id>/ (Hugging Face itself is served at the root)
PREFIXED = tuple(h for h in HUBS if h != DEFAULT)


def check_hub(hub: str) -> str:
    if hub not in HUBS:
        raise BadRequest(f"unknown hub {hub!r}; one of {', '.join(HUBS)}")
    return hub


def prefix(hub: str) -> str:
    """The path a hub's API is served under: '' for Hugging Face, '/hubs/<id>' for the rest."""
    return "" if hub == DEFAULT else f"/hubs/{hub}"
