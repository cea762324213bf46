"""The HTTP routes; each one only translates between HTTP and `CaptionModel`/`Limits`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse

from captioner.serve.form import read_form
from captioner.serve.limits import FLAGS, OPTION_BOUNDS, Limits, parse_options
from captioner.serve.model import CaptionModel
from captioner.serve.responses import FiniteJSONResponse
from captioner.viz.overlay import HEATMAP

router = APIRouter()
STATIC_DIR = Path(__file__).parent / "static"  # the page: plain files, no build step

_UPLOAD_SCHEMA = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["images"],
                    "properties": {
                        "images": {"type": "array", "items": {"type": "string", "format": "binary"}},
                        **{name: {"type": "integer", "minimum": 1} for name in OPTION_BOUNDS},
                        **{name: {"type": "integer", "enum": [0, 1]} for name in FLAGS},
                    },
                }
            }
        },
    }
}


@router.get("/", include_in_schema=False)
async def page() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html")


@router.get("/healthz")
async def healthz(request: Request) -> dict[str, Any]:
    return {"status": "ok", "pending_images": _model(request).batcher.pending}


@router.get("/v1/model")
async def model_info(request: Request) -> dict[str, Any]:
    return {**_model(request).info, "limits": _limits(request).as_json()}


@router.get("/v1/overlay")
async def overlay_style() -> dict[str, Any]:
    """How the page draws attention: the same rules as `captioner attend`/`gallery` (captioner.viz.overlay)."""
    return HEATMAP.as_json()


@router.post("/v1/captions", openapi_extra=_UPLOAD_SCHEMA)
async def captions(request: Request) -> FiniteJSONResponse:
    """Caption every file of the multipart field `images`; options beam_size and max_len, and
    faithfulness=1 for each word's deletion test.

    200 when at least one image was captioned (unreadable ones carry `error`), 422 when none was.
    """
    model, limits = _model(request), _limits(request)
    uploads, fields = await read_form(request, limits)
    options = parse_options(fields, model.defaults, limits)
    results = await model.caption_uploads(uploads, options, limits.max_pixels, request.app.state.budget)
    body: dict[str, Any] = {"options": options, "results": results}
    if all("error" in entry for entry in results):
        return FiniteJSONResponse({"detail": "no uploaded image could be read; see results", **body}, status_code=422)
    return FiniteJSONResponse(body)


def _model(request: Request) -> CaptionModel:
    return request.app.state.model


def _limits(request: Request) -> Limits:
    return request.app.state.limits
