import json
import subprocess
import sys

import pytest
import torch

from benchmarks.__main__ import main
from benchmarks.suite import RATIOS

NUMBERS = [
    "cached_features_train_images_per_s",
    "frozen_encoder_train_images_per_s",
    "cached_features_speedup",
    "decoder_train_images_per_s",
    "decoder_train_naive_images_per_s",
    "decoder_train_speedup",
    "beam5_images_per_s",
    "beam5_one_at_a_time_images_per_s",
    "beam5_speedup",
    "end_to_end_images_per_s",
    "encoder_only_images_per_s",
    "end_to_end_over_encoder_time",
    "threads",
]


def _check(results):
    for key in NUMBERS:
        assert isinstance(results[key], (int, float)) and results[key] > 0, key
    # Every ratio is the quotient of the two measurements it names, from the same run.
    for key, numerator, denominator in RATIOS:
        assert results[key] == pytest.approx(results[numerator] / results[denominator]), key
    assert results["device"] in ("cpu", "cuda")
    assert results["torch_version"] == torch.__version__ and results["cpu"]
    assert results["sizes"] == "tiny"


def test_tiny_run_reports_every_number(capsys):
    results = main(["--tiny", "--device", "cpu"])
    _check(results)
    assert json.loads(capsys.readouterr().out) == results


def test_module_prints_one_json_object():
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--tiny", "--device", "cpu"],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    ).stdout
    _check(json.loads(out))


def test_precision_benchmark_times_every_available_precision():
    from benchmarks import precision as bench
    from captioner.inference.precision import bf16_supported, int8_supported

    results = bench.main(["--tiny"])
    names = ["fp32"] + ["bf16"] * bf16_supported(torch.device("cpu")) + ["int8"] * int8_supported(torch.device("cpu"))
    for name in names:
        assert results[f"{name}_images_per_s"] > 0 and results[f"{name}_speedup"] > 0
    assert results["fp32_speedup"] == 1.0


def test_jpeg_benchmark_reports_rates_and_the_draft_error():
    from benchmarks import jpeg

    results = jpeg.main(["--tiny"])
    for name in ("pillow_full", "full", "draft"):
        assert results[f"{name}_images_per_s_per_core"] > 0
    assert 0 < results["draft_vs_full_decode_mean_abs"] < results["jpeg_q90_vs_lossless_mean_abs"]


def test_data_check_benchmark_checks_every_image_and_caption_it_made():
    from benchmarks import data_check

    results = data_check.main(["--tiny"])
    assert results["checked_images"] == results["images"] == 200
    assert results["checked_captions"] == results["captions"] > 5 * 200
    assert 0 < results["seconds"] < 60 and results["peak_rss_mb"] > 0


def test_faithfulness_ranking_prints_one_row_per_checkpoint(tiny_checkpoint, synth_data, capsys):
    from benchmarks import faithfulness_ranking

    assert faithfulness_ranking.main(["--data", str(synth_data), "--ckpt", str(tiny_checkpoint)]) == 0
    [line] = capsys.readouterr().out.splitlines()
    row = json.loads(line)
    assert row["ckpt"] == str(tiny_checkpoint) and row["images"] == 8 and row["split"] == "test"
    for name in ("pointing_game", "attention_in_box", "chance_pointing_game", "object_median_spread"):
        assert 0 <= row[name] <= 1, name
    # Grounding and the deletion test count the same object words.
    assert row["object_deletion_words"] == row["grounded_words"] >= 1
    assert 0 <= row["object_deletion_dependent_share"] <= 1 and row["deletion_words"] >= row["object_deletion_words"]
    faithful = row["object_deletion_faithfulness"]
    assert (faithful is None) == (row["object_deletion_dependent_words"] == 0)
