"""Reading the multipart body of `POST /v1/captions`, with every malformed body answered in the
API's terms (the `images` field, the options, the boundary, the filename) instead of the parser's."""

from __future__ import annotations

from contextlib import aclosing

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import DEFAULT_MAX_HEADER_SIZE
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from captioner.serve.limits import FLAGS, OPTION_BOUNDS, Limits, RequestRejected
from captioner.serve.model import Upload

# Text parts are the options only: a few digits each.
MAX_TEXT_PART_BYTES = 1024
_WHERE = (
    f"image files go in `images` as file parts (with a filename), the options {', '.join([*OPTION_BOUNDS, *FLAGS])} "
    "as text"
)


class _Parser(MultiPartParser):
    """Starlette's parser, refusing an image sent as text when its headers arrive (before any of
    its data is read) and noting whether the closing boundary was reached."""

    ended = False

    def on_headers_finished(self) -> None:
        super().on_headers_finished()
        part = self._current_part
        if part.file is None and part.field_name == "images":
            raise RequestRejected(422, f"a part of `images` was sent as a text field (no filename): {_WHERE}")

    def on_end(self) -> None:
        self.ended = True


async def read_form(request: Request, limits: Limits) -> tuple[list[Upload], dict[str, str]]:
    """The uploaded files of `images` and the text fields, or RequestRejected saying what is wrong."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise RequestRejected(415, "send multipart/form-data with the image files in the field `images`")
    try:
        async with aclosing(request.stream()) as stream:
            parser = _Parser(
                request.headers,
                stream,
                max_files=limits.max_images,
                max_fields=len(OPTION_BOUNDS) + len(FLAGS) + 2,
                max_part_size=MAX_TEXT_PART_BYTES,
            )
            form = await parser.parse()
    except MultiPartException as error:
        raise _rejected(error, limits) from None
    try:
        if not parser.ended:
            raise RequestRejected(
                400,
                "the multipart body ends before its closing boundary (--BOUNDARY-- after the last part): "
                "it was cut short; send the whole body",
            )
        uploads, fields = [], {}
        for name, value in form.multi_items():
            if isinstance(value, UploadFile) != (name == "images"):
                raise RequestRejected(422, f"field {name!r}: {_WHERE}")
            if isinstance(value, UploadFile):
                filename = value.filename or ""
                if len(filename) > limits.max_filename_chars:
                    raise _long_filename(f"a filename of {len(filename)} characters", limits)
                uploads.append(Upload(filename, await value.read()))
            elif name in fields:
                raise RequestRejected(422, f"option {name!r} was sent twice")
            else:
                fields[name] = value
    finally:
        await form.close()
    if not uploads:
        raise RequestRejected(422, "no images: send one or more files in the multipart field `images`")
    return uploads, fields


def _rejected(error: MultiPartException, limits: Limits) -> RequestRejected:
    """The parser's complaint, said in terms of the API."""
    message, cause = error.message, error.__cause__
    if message.startswith("Too many files"):
        return RequestRejected(413, f"too many images: at most {limits.max_images} per request")
    if message.startswith("Too many fields"):
        return RequestRejected(422, f"too many text fields: {_WHERE}")
    if message.startswith("Part exceeded maximum size"):
        return RequestRejected(422, f"a text field is over {MAX_TEXT_PART_BYTES} bytes: {_WHERE}")
    if message.startswith("Missing boundary"):
        return RequestRejected(400, "the Content-Type header has no boundary: send multipart/form-data; boundary=...")
    if isinstance(cause, MultipartParseError) and "header size" in str(cause):
        return _long_filename(f"a part header over {DEFAULT_MAX_HEADER_SIZE} bytes (its filename?)", limits)
    detail = f"{message} {cause}" if cause else message
    return RequestRejected(400, f"the multipart body could not be read ({detail}); {_WHERE}")


def _long_filename(what: str, limits: Limits) -> RequestRejected:
    return RequestRejected(
        422, f"{what}: send each image with a filename of at most {limits.max_filename_chars} characters"
    )
