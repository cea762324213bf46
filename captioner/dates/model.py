"""The date translator as a plain nn.Module: characters in, ISO date out, α per output character.

    loaded = load_dates_model("runs/dates/checkpoints/best.ckpt")
    [result] = loaded.model.translate(["July 20th 1969"], loaded.decoding)
    result.output, result.alphas.shape        # '1969-07-20', (10, 14)

Both sides are character sequences with a `captioner.vocab.Vocabulary` each (characters as
the "words"): the input side holds every character of the training inputs, the output side
the digits and "-". The image model's `Decoder` does the rest, attending over the
`SequenceEncoder`'s features with a mask over padding.
"""

from __future__ import annotations

import dataclasses
import datetime
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from captioner.errors import CaptionerError, require_positive
from captioner.inference.checkpoint import load_checkpoint
from captioner.models import DecoderConfig, FusedDecoder, SequenceEncoder, SequenceEncoderConfig
from captioner.models.captioner import ShowAttendTell
from captioner.models.search import DecodingConfig
from captioner.vocab import SPECIALS, Vocabulary

OUTPUT_CHARS = "0123456789-"
OUTPUT_LEN = 10  # YYYY-MM-DD
TARGET_VOCAB = Vocabulary([*SPECIALS, *OUTPUT_CHARS])


def source_vocabulary(input_chars: list[str]) -> Vocabulary:
    """The input side: the specials, then one "word" per character."""
    return Vocabulary([*SPECIALS, *input_chars])


def encode_texts(vocab: Vocabulary, texts: list[str]) -> Tensor:
    """Character ids (B, T_x) of `texts`, padded with <pad> after each text's end."""
    tokens = torch.full((len(texts), max(map(len, texts))), vocab.pad_id, dtype=torch.long)
    for i, text in enumerate(texts):
        tokens[i, : len(text)] = torch.tensor([vocab.id(ch) for ch in text])
    return tokens


def encode_targets(dates: list[str]) -> Tensor:
    """ISO dates -> (B, 12) ids: <start>, the ten characters, <end>."""
    v = TARGET_VOCAB
    return torch.tensor([[v.start_id, *map(v.id, date), v.end_id] for date in dates])


@dataclass
class Translation:
    """text: the input as the model read it (whitespace collapsed); output: what it wrote;
    alphas (L, T_x): one attention row per output character over the input characters;
    score: the decoding score; valid: whether `output` is a calendar date."""

    text: str
    output: str
    alphas: Tensor
    score: float

    @property
    def valid(self) -> bool:
        try:
            datetime.date.fromisoformat(self.output)
        except ValueError:
            return False
        return len(self.output) == OUTPUT_LEN


def normalize(text: str) -> str:
    """The input as the model reads it: runs of whitespace become one space, ends stripped."""
    return " ".join(text.split())


class DatesModel(ShowAttendTell):
    """The image captioner's model with a `SequenceEncoder` for its encoder: tokens (B, T_x)
    -> annotations (features (B, T_x, D), mask) -> the same decoder -> output characters.

    input_chars: the input alphabet (from the training data); max_input_len: longest input
    accepted, in characters after `normalize`.
    """

    def __init__(
        self,
        input_chars: list[str],
        encoder: SequenceEncoderConfig,
        decoder: DecoderConfig,
        max_input_len: int = 64,
    ) -> None:
        require_positive(max_input_len=max_input_len)
        source = source_vocabulary(input_chars)
        sequence = SequenceEncoder(encoder, len(source), pad_id=source.pad_id)
        super().__init__(sequence, FusedDecoder(decoder, len(TARGET_VOCAB), sequence.out_dim))
        self.source, self.target = source, TARGET_VOCAB
        self.max_input_len = max_input_len

    def check_texts(self, texts: list[str]) -> list[str]:
        """`texts` normalised. Raises CaptionerError for an empty text, one longer than
        `max_input_len`, or one with characters the model never saw."""
        texts = [normalize(text) for text in texts]
        if not texts:
            raise CaptionerError("no date given; pass a date such as 'July 20th 1969'")
        for text in texts:
            if not text:
                raise CaptionerError("the date is empty; pass a date such as 'July 20th 1969'")
            if len(text) > self.max_input_len:
                raise CaptionerError(
                    f"the date is {len(text)} characters long; this model reads at most {self.max_input_len} "
                    f"(a written date is rarely longer than 40): pass one date at a time"
                )
            unseen = sorted({ch for ch in text if ch not in self.source})  # specials are longer than one character
            if unseen:
                known = "".join(w for w in self.source.words if w not in SPECIALS)
                raise CaptionerError(
                    f"{text[:60]!r} has characters the model never saw in training: {''.join(unseen)!r}; "
                    f"it knows only {known!r}"
                )
        return texts

    @torch.inference_mode()
    def decode(self, inputs: Tensor, settings: DecodingConfig) -> list[tuple[str, Tensor, float]]:
        """inputs (B, T_x) -> per row: output text, alphas (L, T_x), score. Greedy for beam_size 1;
        at most ten characters and <end>, whatever `settings.max_len` says."""
        settings = dataclasses.replace(settings, max_len=OUTPUT_LEN + 1)
        captions = self.caption(self.encode(inputs), self.target, settings)
        return [("".join(self.target.decode_tokens(c.tokens)), c.alphas, c.score) for c in captions]

    def translate(self, texts: list[str], settings: DecodingConfig) -> list[Translation]:
        """Translate human-written dates; α rows cover each text's own characters only."""
        texts = self.check_texts(texts)
        inputs = encode_texts(self.source, texts).to(next(self.parameters()).device)
        results = []
        for text, (output, alphas, score) in zip(texts, self.decode(inputs, settings)):
            results.append(Translation(text, output, alphas[:, : len(text)].float(), score))
        return results


@dataclass(frozen=True)
class LoadedDatesModel:
    """A `DatesModel` (CPU, eval mode) and the decoding settings its checkpoint carries."""

    model: DatesModel
    decoding: DecodingConfig


def load_dates_model(path: str | Path) -> LoadedDatesModel:
    """The model in a checkpoint written by `captioner dates fit`, read without running code
    from the file; CaptionerError naming the file if it is not one."""
    checkpoint = load_checkpoint(path)
    hparams = checkpoint["hyper_parameters"]
    if "input_chars" not in hparams:
        raise CaptionerError(
            f"checkpoint {path} is not a dates model (no input_chars in its hyper-parameters); "
            "pass one written by `captioner dates fit`"
        )
    try:
        model = DatesModel(
            list(hparams["input_chars"]),
            SequenceEncoderConfig.from_dict(hparams.get("encoder")),
            DecoderConfig.from_dict(hparams.get("decoder")),
            int(hparams.get("max_input_len", 64)),
        )
        decoding = DecodingConfig.from_dict(hparams.get("decoding"))
        state = {k[len("model.") :]: v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")}
        model.load_state_dict(state, strict=True)
    except (TypeError, ValueError, RuntimeError) as error:
        detail = " ".join(str(error).split())[:300]
        raise CaptionerError(
            f"checkpoint {path} does not fit this version of captioner ({detail}); retrain with `captioner dates fit`"
        ) from None
    return LoadedDatesModel(model.eval(), decoding)
