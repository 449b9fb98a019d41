"""TF_CONFIG from any launcher: SkyPilot env vars, an explicit host list, or passed through (Vertex AI).

PLACEHOLDER — being written (issue 7). Signatures are the contract.
"""

from __future__ import annotations


def resolve(environ, *, hosts: str | None = None, index: int | None = None, port: int | None = None) -> dict:
    """The TF_CONFIG dict for this node: from --hosts/--index, else SkyPilot env, else environ['TF_CONFIG']."""
    raise NotImplementedError


def ensure_tf_config(environ) -> dict | None:
    """Set environ['TF_CONFIG'] from SkyPilot env vars when it is unset and there are >1 nodes; return it."""
    return None
