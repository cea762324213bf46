"""What one request may ask of the service (and all of them at once), and the 4xx errors for asking more."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields

from captioner.data.images import MAX_PIXELS
from captioner.errors import CaptionerError
from captioner.models.search import DECODING_LIMITS


class RequestRejected(CaptionerError):
    """A request the service refuses: answered as JSON `{"detail": message}` with `status`."""

    def __init__(self, status: int, message: str):
        self.status = status
        super().__init__(message)


@dataclass(frozen=True)
class Limits:
    """Bounds on one request. Everything beyond them is a 4xx answer, never a failure."""

    max_request_bytes: int = 20 * 2**20  # the whole multipart body, all images together
    max_images: int = 16
    # Below the data layer's MAX_PIXELS: a service decodes several uploads at once, and 40 MP of
    # RGB is already 120 MB. A 48 MP phone photo has to be downscaled by the client.
    max_pixels: int = 40_000_000
    # Across all requests: the pixels decoding at once (see captioner/serve/budget.py), two of the
    # largest images. An upload waits up to max_decode_wait_s for room, then gets 503.
    max_pixels_in_flight: int = 80_000_000
    max_decode_wait_s: int = 10
    max_filename_chars: int = 255  # a file name is echoed back in the answer
    # At most the bounds every caller has (captioner.models.search.DECODING_LIMITS); lower if wished.
    max_beam_size: int = DECODING_LIMITS["beam_size"]
    max_caption_len: int = DECODING_LIMITS["max_len"]

    def __post_init__(self) -> None:
        for field in fields(self):
            if getattr(self, field.name) < 1:
                raise CaptionerError(f"service limit {field.name} must be at least 1, got {getattr(self, field.name)}")
        if self.max_pixels > MAX_PIXELS:
            raise CaptionerError(f"max_pixels may be at most {MAX_PIXELS} (captioner.data.images.MAX_PIXELS)")
        if self.max_pixels_in_flight < self.max_pixels:
            raise CaptionerError("max_pixels_in_flight must be at least max_pixels, or the largest images never fit")
        for option, bound in OPTION_BOUNDS.items():
            if getattr(self, bound) > DECODING_LIMITS[option]:
                raise CaptionerError(
                    f"{bound} may be at most {DECODING_LIMITS[option]} (captioner.models.search.DECODING_LIMITS)"
                )

    def as_json(self) -> dict[str, int]:
        return {field.name: getattr(self, field.name) for field in fields(self)}


# Form field -> the Limits attribute bounding it.
OPTION_BOUNDS = {"beam_size": "max_beam_size", "max_len": "max_caption_len"}
# Form fields that are 0 (off, the default) or 1. faithfulness: each word's deletion test
# (captioner.evaluation.faithfulness), several decoding passes' worth (docs/attention.md).
FLAGS = ("faithfulness",)


def parse_options(form: Mapping[str, str], defaults: Mapping[str, int], limits: Limits) -> dict[str, int]:
    """The decoding options of a request: `defaults`, overridden by the form's text fields.

    Raises RequestRejected (422) for an unknown field, a non-integer or an out-of-range value.
    """
    unknown = sorted(set(form) - set(OPTION_BOUNDS) - set(FLAGS))
    if unknown:
        raise RequestRejected(
            422,
            f"unknown form field {unknown[0]!r}: send images in `images` and options "
            f"{', '.join([*OPTION_BOUNDS, *FLAGS])}",
        )
    options = {**dict(defaults), **dict.fromkeys(FLAGS, 0)}
    for name in FLAGS:
        if name in form:
            if form[name].strip() not in ("0", "1"):
                raise RequestRejected(422, f"{name} must be 0 or 1, got {form[name][:20]!r}")
            options[name] = int(form[name].strip())
    for name, bound in OPTION_BOUNDS.items():
        if name not in form:
            continue
        text, high = form[name].strip(), getattr(limits, bound)
        if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= high:
            raise RequestRejected(422, f"{name} must be an integer from 1 to {high}, got {form[name][:20]!r}")
        options[name] = int(text)
    return options
