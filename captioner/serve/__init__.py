"""The HTTP captioning service and its attention page.

    captioner serve --ckpt runs/demo/checkpoints/best.ckpt --port 8000
    curl -F images=@photo.jpg -F beam_size=3 http://127.0.0.1:8000/v1/captions

`create_app(CaptionModel.from_checkpoint(path), Limits())` builds the ASGI app. Layout:
`app.py` (the application, limits middleware, error answers), `routes.py` (thin routes),
`model.py` (the one model object, batching requests through `batching.py`), `limits.py`
(what a request may ask), `static/` (the page at `/`).
"""

from captioner.serve.app import create_app
from captioner.serve.limits import Limits
from captioner.serve.model import CaptionModel

__all__ = ["CaptionModel", "Limits", "create_app"]
