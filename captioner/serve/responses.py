"""The service's JSON answers, which never carry NaN or infinity.

A model with broken weights can produce a NaN score or attention weight. JSON has no such
numbers: Starlette's encoder refuses them (a 500 for the request) and other encoders write
`NaN`, which strict parsers reject. `FiniteJSONResponse` sends every non-finite float as null.
"""

from __future__ import annotations

import math
from typing import Any

from fastapi.responses import JSONResponse


class FiniteJSONResponse(JSONResponse):
    """A JSONResponse with NaN and ±inf sent as null (only checked for when encoding fails)."""

    def render(self, content: Any) -> bytes:
        try:
            return super().render(content)
        except ValueError:  # "Out of range float values are not JSON compliant"
            return super().render(finite(content))


def finite(content: Any) -> Any:
    """`content` (plain JSON data) with every non-finite float replaced by None."""
    if isinstance(content, float):
        return content if math.isfinite(content) else None
    if isinstance(content, dict):
        return {key: finite(value) for key, value in content.items()}
    if isinstance(content, (list, tuple)):
        return [finite(value) for value in content]
    return content
