"""Caption metrics: the COCO caption evaluation.

pycocoevalcap exactly as the COCO server uses it: every caption goes through its PTB
tokenizer (a Java program), then BLEU-1..4, METEOR (another Java program), ROUGE-L and
CIDEr. Java must be on PATH.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from captioner.errors import CaptionerError

__all__ = ["caption_scores", "per_image_cider"]


def caption_scores(
    references: Mapping[int, Sequence[str]],
    candidates: Mapping[int, str],
    *,
    spice: bool = False,
) -> dict[str, float]:
    """Corpus-level COCO caption scores.

    Args:
        references: image id -> its reference captions (raw text, at least one non-empty).
        candidates: image id -> the one generated caption (raw text; may be empty).
        spice: also compute SPICE when its Stanford CoreNLP models are installed;
            otherwise warn and leave the key out.

    Returns:
        ``{"BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr"}`` (+ ``"SPICE"``)
        as plain floats, on pycocoevalcap's scale (CIDEr is not multiplied by 100).

    An empty candidate (or one that is only punctuation) scores 0 on every metric
    for its image instead of crashing pycocoevalcap's ROUGE-L.
    """
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider

    gts, res = _tokenized(references, candidates)
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    cider, _ = Cider().compute_score(gts, res)
    scores = {f"BLEU-{n}": float(bleu[n - 1]) for n in range(1, 5)}
    scores["METEOR"] = _meteor(gts, res)
    scores["ROUGE-L"] = _rouge_l(gts, res)
    scores["CIDEr"] = float(cider)
    if spice:
        value = _spice(gts, res)
        if value is not None:
            scores["SPICE"] = value
    return scores


def per_image_cider(references: Mapping[int, Sequence[str]], candidates: Mapping[int, str]) -> dict[int, float]:
    """CIDEr of each image's candidate, image id -> score.

    CIDEr weighs n-grams by their document frequency over *all* the references given,
    so an image's score depends on the set it is scored with (as on the COCO server).
    """
    from pycocoevalcap.cider.cider import Cider

    gts, res = _tokenized(references, candidates)
    _, per_image = Cider().compute_score(gts, res)
    return {image_id: float(s) for image_id, s in zip(gts, per_image)}


def _tokenized(
    references: Mapping[int, Sequence[str]], candidates: Mapping[int, str]
) -> tuple[dict[int, list[str]], dict[int, list[str]]]:
    """Validate ids, then PTB-tokenize into pycocoevalcap's ``{id: [sentences]}`` shape.

    Blank strings are not sent to the tokenizer (one caption per line: they would be
    the only lines that can go missing); they come back as "" for a candidate and are
    dropped for a reference.
    """
    if set(candidates) != set(references):
        missing = sorted(set(references) - set(candidates))[:5]
        extra = sorted(set(candidates) - set(references))[:5]
        raise CaptionerError(
            "caption scores need exactly one candidate per reference image: "
            f"images without a candidate {missing}, candidates without references {extra} "
            "(first five shown); score the same set of image ids on both sides"
        )
    if not candidates:
        raise CaptionerError("no captions to score: pass at least one image")
    _require_java()

    ids = sorted(candidates)
    # Keys are (image id, index) so each text keeps its slot through the tokenizer.
    texts: dict[tuple[int, int], str] = {}
    for image_id in ids:
        texts[(image_id, -1)] = candidates[image_id]
        for k, ref in enumerate(references[image_id]):
            texts[(image_id, k)] = ref
    tokens = _ptb_tokenize({key: text for key, text in texts.items() if text.strip()})

    gts: dict[int, list[str]] = {}
    res: dict[int, list[str]] = {}
    for image_id in ids:
        res[image_id] = [tokens.get((image_id, -1), "")]
        refs = [tokens.get((image_id, k), "") for k in range(len(references[image_id]))]
        gts[image_id] = [r for r in refs if r]
        if not gts[image_id]:
            raise CaptionerError(
                f"image {image_id} has no non-empty reference caption; "
                "drop it from the evaluation set or fix its annotations"
            )
    return gts, res


def _ptb_tokenize(texts: dict[Any, str]) -> dict[Any, str]:
    """PTB-tokenize (lower-cased, punctuation removed) each text, keyed as given."""
    if not texts:
        return {}
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    out = PTBTokenizer().tokenize({key: [{"caption": text}] for key, text in texts.items()})
    if set(out) != set(texts):
        raise CaptionerError("the PTB tokenizer (Java) returned fewer lines than it was given")
    return {key: sentences[0] for key, sentences in out.items()}


def _require_java() -> None:
    if shutil.which("java") is None:
        raise CaptionerError(
            "Java is needed for METEOR and the PTB tokenizer of the COCO caption metrics, "
            "but `java` is not on PATH; install a JRE (e.g. `apt-get install default-jre`)"
        )


def _meteor(gts: dict[int, list[str]], res: dict[int, list[str]]) -> float:
    """METEOR over the corpus; its Java process is always shut down afterwards."""
    from pycocoevalcap.meteor.meteor import Meteor

    meteor = Meteor()
    try:
        score, _ = meteor.compute_score(gts, res)
    finally:
        _close_meteor(meteor)
    return float(score)


def _close_meteor(meteor: Any) -> None:
    """End the METEOR subprocess and free its pipes.

    pycocoevalcap only does this in ``__del__``, which waits on a lock that stays held
    forever if ``compute_score`` raised; release it so garbage collection cannot hang.
    """
    process: subprocess.Popen = meteor.meteor_p
    for pipe in (process.stdin, process.stdout, process.stderr):
        pipe.close()
    process.kill()
    process.wait()
    if meteor.lock.locked():
        meteor.lock.release()


def _rouge_l(gts: dict[int, list[str]], res: dict[int, list[str]]) -> float:
    """Mean ROUGE-L; an empty candidate scores 0 (pycocoevalcap would divide by zero)."""
    from pycocoevalcap.rouge.rouge import Rouge

    rouge = Rouge()
    per_image = [rouge.calc_score(res[i], gts[i]) if res[i][0] else 0.0 for i in gts]
    return float(np.mean(per_image))


def _spice(gts: dict[int, list[str]], res: dict[int, list[str]]) -> float | None:
    """SPICE, or None (with a warning) when it cannot run here.

    pycocoevalcap's ``Spice()`` downloads Stanford CoreNLP on first use; we never let it
    (no network at run time), so SPICE runs only when those jars are already installed.
    """
    from pycocoevalcap.spice import get_stanford_models as models

    jar = os.path.join(models.SPICEDIR, models.SPICELIB, f"{models.JAR}.jar")
    if not os.path.exists(jar):
        warnings.warn(
            f"SPICE skipped: it needs Stanford CoreNLP ({jar} is missing); "
            "run pycocoevalcap's spice/get_stanford_models.py once with network access",
            stacklevel=3,
        )
        return None
    from pycocoevalcap.spice.spice import Spice

    try:
        score, _ = Spice().compute_score(gts, res)
    except (OSError, subprocess.CalledProcessError) as error:
        warnings.warn(f"SPICE skipped: its Java run failed ({error})", stacklevel=3)
        return None
    return float(score)
