"""Caption metrics: the COCO caption evaluation.

With `java` on PATH, pycocoevalcap exactly as the COCO server uses it: every caption goes
through its PTB tokenizer (a Java program), then BLEU-1..4, METEOR (another Java program),
ROUGE-L and CIDEr. Without Java, the captions go through nltk's Penn Treebank tokenizer with
the coco-caption rules (lower-cased, its punctuation tokens dropped) and the same Python
scorers give BLEU-1..4, ROUGE-L and CIDEr; METEOR and SPICE are left out with one warning.
See docs/evaluation.md for how close the two tokenizations score.
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

__all__ = ["JavaMissingWarning", "caption_scores", "has_java", "per_image_cider"]


class JavaMissingWarning(UserWarning):
    """Java is not on PATH: the metrics that need it are left out."""


def has_java() -> bool:
    """Whether `java` is on PATH (the Java PTB tokenizer, METEOR and SPICE need it)."""
    return shutil.which("java") is not None


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
        as plain floats, on pycocoevalcap's scale (CIDEr is not multiplied by 100). Without
        Java, "METEOR" and "SPICE" are absent and a `JavaMissingWarning` says so.

    An empty candidate (or one that is only punctuation) scores 0 on every metric
    for its image instead of crashing pycocoevalcap's ROUGE-L.
    """
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider

    java = has_java()
    if not java:
        warnings.warn(
            f"`java` is not on PATH, so {'METEOR and SPICE are' if spice else 'METEOR is'} left out and captions "
            "are tokenized by nltk instead of the Java PTB tokenizer (BLEU, ROUGE-L and CIDEr are still "
            "computed); install a Java runtime (e.g. `apt-get install default-jre-headless`) for the full "
            "COCO metrics",
            JavaMissingWarning,
            stacklevel=2,
        )
    gts, res = _tokenized(references, candidates)
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    cider, _ = Cider().compute_score(gts, res)
    scores = {f"BLEU-{n}": float(bleu[n - 1]) for n in range(1, 5)}
    if java:
        scores["METEOR"] = _meteor(gts, res)
    scores["ROUGE-L"] = _rouge_l(gts, res)
    scores["CIDEr"] = float(cider)
    if spice and java:
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
    """Validate ids, then PTB-tokenize (Java's tokenizer, or nltk's without Java) into
    pycocoevalcap's ``{id: [sentences]}`` shape.

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

    ids = sorted(candidates)
    # Keys are (image id, index) so each text keeps its slot through the tokenizer.
    texts: dict[tuple[int, int], str] = {}
    for image_id in ids:
        texts[(image_id, -1)] = candidates[image_id]
        for k, ref in enumerate(references[image_id]):
            texts[(image_id, k)] = ref
    tokenize = _ptb_tokenize if has_java() else _treebank_tokenize
    tokens = tokenize({key: text for key, text in texts.items() if text.strip()})

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


def _treebank_tokenize(texts: dict[Any, str]) -> dict[Any, str]:
    """The Java-free stand-in for `_ptb_tokenize`: nltk's Penn Treebank tokenizer with the
    coco-caption options (-preserveLines: one caption per line, newlines as spaces;
    -lowerCase) and the same punctuation tokens removed afterwards."""
    from nltk.tokenize import TreebankWordTokenizer
    from pycocoevalcap.tokenizer.ptbtokenizer import PUNCTUATIONS

    tokenizer = TreebankWordTokenizer()
    drop = set(PUNCTUATIONS)
    out = {}
    for key, text in texts.items():
        # Java lower-cases its bracket tokens too (-LRB- -> -lrb-), so the upper-case ones in
        # PUNCTUATIONS never match and brackets stay in as -lrb- / -rrb-.
        words = tokenizer.tokenize(text.replace("\n", " "), convert_parentheses=True)
        out[key] = " ".join(w.lower() for w in words if w.lower() not in drop)
    return out


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
