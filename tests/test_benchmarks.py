import json
import subprocess
import sys

import pytest
import torch

from benchmarks.__main__ import main
from benchmarks.suite import RATIOS, TINY, images_per_s
from captioner.inference.precision import bf16_supported

# The mixed precisions this CPU multiplies natively; their training rows stand beside float32's.
PRECISIONS = ["32-true"] + ["bf16-mixed"] * bf16_supported(torch.device("cpu"))
TRAININGS = [
    "decoder_train",
    "cached_features_train",
    "xe_train",
    "hard_attention_train",
    "xe_current_train",
    "hard_current_train",
    "scst_5_samples_train",
    "scst_greedy_train",
]
# Each measured rate and how many images the work it times handles per call, at the tiny sizes.
IMAGES_PER_CALL = {
    **{images_per_s(name, precision): TINY.train_batch for name in TRAININGS for precision in PRECISIONS},
    "decoder_train_naive_images_per_s": TINY.train_batch,
    "frozen_encoder_train_images_per_s": TINY.train_batch,
    "beam5_images_per_s": TINY.decode_batch,
    "beam5_current_images_per_s": TINY.decode_batch,
    "beam5_one_at_a_time_images_per_s": TINY.one_at_a_time_images,
    "end_to_end_images_per_s": TINY.image_batch,
    "encoder_only_images_per_s": TINY.image_batch,
}
# The FLOP count of a training image and the matmul speed of each precision the bounds use.
FLOPS = {"decoder_train_gflop_per_image", "matmul_float32_gflop_per_s"} | {
    "matmul_bfloat16_gflop_per_s" for _ in PRECISIONS[1:]
}
MACHINE = {"device", "threads", "torch_version", "cpu", "cpu_avx512_bf16", "cpu_amx", "load_average_1min", "sizes"}


class _Clock:
    """time.perf_counter for `benchmarks.suite`: every timed call lasts exactly TICK seconds."""

    TICK = 0.25

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        self.now += self.TICK  # read before and after each timed call
        return self.now


def test_every_rate_is_the_images_of_a_call_over_its_median_time(monkeypatch, capsys):
    monkeypatch.setattr("benchmarks.suite.time", _Clock())
    results = main(["--tiny", "--device", "cpu"])
    assert json.loads(capsys.readouterr().out) == results
    ratios = {key for key, numerator, denominator in RATIOS if numerator in results and denominator in results}
    assert set(results) == MACHINE | set(IMAGES_PER_CALL) | FLOPS | ratios
    for key, images in IMAGES_PER_CALL.items():
        assert results[key] == pytest.approx(images / _Clock.TICK), key
    assert not any("16_mixed" in key and "bf16" not in key for key in results)  # 16-mixed is for CUDA
    # Every ratio is the quotient of the two measurements it names, from the same run.
    for key in ratios:
        _, numerator, denominator = next(row for row in RATIOS if row[0] == key)
        assert results[key] == pytest.approx(results[numerator] / results[denominator]), key
    assert (results["device"], results["sizes"], results["threads"]) == ("cpu", "tiny", torch.get_num_threads())
    assert isinstance(results["cpu_avx512_bf16"], bool) and isinstance(results["cpu_amx"], bool)
    assert results["torch_version"] == torch.__version__ and results["cpu"]


def test_module_prints_one_json_object_of_real_timings():
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--tiny", "--device", "cpu"],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    ).stdout
    results = json.loads(out)
    ratios = {key for key, numerator, denominator in RATIOS if numerator in results and denominator in results}
    assert set(results) == MACHINE | set(IMAGES_PER_CALL) | FLOPS | ratios
    for key in IMAGES_PER_CALL:  # a real clock: finite rates, each from time actually spent
        assert 0 < results[key] < float("inf"), key


def test_precision_benchmark_times_every_available_precision():
    from benchmarks import precision as bench
    from captioner.inference.precision import bf16_supported, int8_supported

    results = bench.main(["--tiny"])
    names = ["fp32"] + ["bf16"] * bf16_supported(torch.device("cpu")) + ["int8"] * int8_supported(torch.device("cpu"))
    for name in names:  # each speedup is its rate over fp32's, from the same run
        assert results[f"{name}_speedup"] == pytest.approx(
            results[f"{name}_images_per_s"] / results["fp32_images_per_s"]
        )
    assert results["fp32_speedup"] == 1.0


def test_jpeg_benchmark_reports_rates_and_the_draft_error():
    from benchmarks import jpeg

    results = jpeg.main(["--tiny"])
    rates = {name: results[f"{name}_images_per_s_per_core"] for name in ("pillow_full", "full", "draft")}
    assert results["draft_speedup"] == pytest.approx(rates["draft"] / rates["full"])
    assert results["draft_speedup_over_pillow_full"] == pytest.approx(rates["draft"] / rates["pillow_full"])
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


def test_only_some_measurements_on_one_thread(capsys):
    threads = torch.get_num_threads()
    try:
        results = main(["--tiny", "--device", "cpu", "--only", "decoder_train_bound", "--threads", "1"])
    finally:
        torch.set_num_threads(threads)  # the rest of the session keeps its threads
    assert results["threads"] == 1 and results["decoder_train_float32_bound_images_per_s"] > 0
    assert "decoder_train_images_per_s" not in results and "beam5_images_per_s" not in results
    with pytest.raises(SystemExit) as exit_info:
        main(["--tiny", "--only", "decoder_train,beam7"])
    assert exit_info.value.code == 2 and "unknown measurements ['beam7']" in capsys.readouterr().err
