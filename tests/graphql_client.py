"""A GraphQL call to a local ``dagster-webserver``, shared by the Dagster-layer and scale-out tests
(this folder is on ``sys.path`` through its conftest)."""

from __future__ import annotations

import json
import urllib.request


def graphql(port: int, query: str, variables: dict | None = None) -> dict:
    """POST ``query`` to ``http://127.0.0.1:<port>/graphql``; the decoded JSON answer."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query, "variables": variables or {}}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())
