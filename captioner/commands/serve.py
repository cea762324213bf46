"""`captioner serve`: caption images over HTTP, with a page that shows where each word looked.

    captioner serve --ckpt runs/demo/checkpoints/best.ckpt                 # http://127.0.0.1:8000/
    captioner serve --ckpt best.ckpt --host 0.0.0.0 --port 9000 --max-batch 32

Endpoints: `POST /v1/captions` (multipart field `images`, options beam_size and max_len),
`GET /v1/model`, `GET /v1/overlay`, `GET /healthz`, and the page at `/`. Binds to 127.0.0.1
unless --host says otherwise. Stops on Ctrl-C.
"""

from __future__ import annotations

import argparse

from captioner.commands.common import add_model_arguments, load_captioner, model_source
from captioner.errors import CaptionerError
from captioner.serve.batching import BatchSettings
from captioner.serve.limits import Limits

_DEFAULT_LIMITS = Limits()
_DEFAULT_BATCHING = BatchSettings()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1, this machine)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda or cuda:N")
    parser.add_argument(
        "--max-batch",
        type=int,
        default=_DEFAULT_BATCHING.max_batch,
        help="most images decoded together (default %(default)s)",
    )
    parser.add_argument(
        "--max-wait-ms",
        type=float,
        default=1000 * _DEFAULT_BATCHING.max_wait_s,
        help="how long a batch waits for more images (default %(default)s)",
    )
    parser.add_argument(
        "--max-images", type=int, default=_DEFAULT_LIMITS.max_images, help="images per request (default %(default)s)"
    )
    parser.add_argument(
        "--max-request-mb",
        type=float,
        default=_DEFAULT_LIMITS.max_request_bytes / 2**20,
        help="request body size in MiB (default %(default)s)",
    )
    parser.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from captioner.serve import CaptionModel, create_app

    if not 0 <= args.port <= 65535:
        raise CaptionerError(f"--port must be from 0 to 65535, got {args.port}")
    limits = Limits(max_images=args.max_images, max_request_bytes=int(args.max_request_mb * 2**20))
    batching = BatchSettings(max_batch=args.max_batch, max_wait_s=args.max_wait_ms / 1000)
    model = CaptionModel(load_captioner(args, device=args.device), checkpoint=model_source(args), batching=batching)
    uvicorn.run(create_app(model, limits), host=args.host, port=args.port, log_level=args.log_level)
    return 0
