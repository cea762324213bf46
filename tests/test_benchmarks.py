import json
import subprocess
import sys

import pytest
import torch

from benchmarks.__main__ import main
from benchmarks.suite import RATIOS
from captioner.inference.precision import bf16_supported

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
    "decoder_train_gflop_per_image",
    "matmul_float32_gflop_per_s",
    "decoder_train_float32_bound_images_per_s",
    "decoder_train_of_float32_bound",
]
# Beside float32, where the CPU multiplies bfloat16 (AVX512-BF16 or AMX).
BF16_MIXED = [
    "decoder_train_bf16_mixed_images_per_s",
    "decoder_train_bf16_mixed_speedup",
    "matmul_bfloat16_gflop_per_s",
    "decoder_train_bfloat16_bound_images_per_s",
    "decoder_train_bf16_mixed_of_bfloat16_bound",
    "cached_features_train_bf16_mixed_speedup",
    "hard_attention_train_bf16_mixed_speedup",
    "scst_greedy_train_bf16_mixed_speedup",
]


def _check(results):
    for key in NUMBERS + BF16_MIXED * bf16_supported(torch.device("cpu")):
        assert isinstance(results[key], (int, float)) and results[key] > 0, key
    assert not any("16_mixed" in key and "bf16" not in key for key in results)  # 16-mixed is for CUDA
    assert isinstance(results["cpu_avx512_bf16"], bool) and isinstance(results["cpu_amx"], bool)
    # Every ratio is the quotient of the two measurements it names, from the same run.
    for key, numerator, denominator in RATIOS:  # those of precisions this machine lacks are absent
        assert (key in results) == (numerator in results and denominator in results), key
        if key in results:
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
