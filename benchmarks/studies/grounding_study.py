"""What makes the soft-attention decoder ground its words: one training run per (setting, family).

    python -m benchmarks.studies.grounding_study --data data/study --runs runs/study            # every row
    python -m benchmarks.studies.grounding_study --rows paper lambda0 --families glyphs        # some rows

For each family it makes a data set once (`captioner data synth`, 2000/200/200 images at the
family's size in `FAMILIES`: 64 px, scenes 96 px, which the recipes' 64 px input resizes),
then per row runs `captioner train fit` (for the rows in `WITH_SCST`, a second fit: self-critical
training layered over the first, from its best.ckpt) and `captioner train test` on best.ckpt,
and prints one JSON line: the test BLEU-4, CIDEr, pointing game, attention in box, chance,
grounded words, mean caption length, share of dangling endings, deletion faithfulness (content
and object words) with the object words' image-dependent share and lead, wall and CPU minutes of all
the commands, the load average before and after (the machine may be shared), and the exact
commands. Runs are niced (nice -n 5).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

# Row name -> (config, or configs layered, and CLI overrides). "paper" is the shapes demo as it ships: the paper's
# doubly stochastic term (λ = 1), scalar gate, a two-stage ResNet-18 trunk, no coordinates.
LAMBDA0 = ["--model.objective.attention_lambda", "0"]
HARD = ["--model.decoder.attention", "hard", "--model.objective", "HardAttention"]
CURRENT = ["--model.decoder.attend_from", "current"]
UNALIGNED = ["--model.encoder.align_grid", "false"]
# The small-data recipe with hard attention: its config, layered.
HARD_RECIPE = ("configs/small_scratch.yaml", "configs/small_scratch_hard.yaml")
ROWS: dict[str, tuple[str | tuple[str, ...], list[str]]] = {
    "paper": ("configs/shapes.yaml", []),
    "lambda0": ("configs/shapes.yaml", LAMBDA0),
    "stages1": ("configs/shapes.yaml", ["--model.encoder.stages", "1"]),
    "lambda0_coords": ("configs/shapes.yaml", [*LAMBDA0, "--model.encoder.coord_channels", "true"]),
    "lambda0_gate_none": ("configs/shapes.yaml", [*LAMBDA0, "--model.decoder.gate", "none"]),
    "lambda0_grid4": ("configs/shapes.yaml", [*LAMBDA0, "--model.encoder.grid_size", "4"]),
    "lambda0_stages3_grid4": (
        "configs/shapes.yaml",
        [*LAMBDA0, "--model.encoder.stages", "3", "--model.encoder.grid_size", "4"],
    ),
    "lambda0_seed1": ("configs/shapes.yaml", [*LAMBDA0, "--seed_everything", "1"]),
    "lambda0_entropy0.03": ("configs/shapes.yaml", [*LAMBDA0, "--model.objective.attention_entropy", "0.03"]),
    "lambda0_entropy0.1": ("configs/shapes.yaml", [*LAMBDA0, "--model.objective.attention_entropy", "0.1"]),
    "lambda0_size128_grid16": (
        "configs/shapes.yaml",
        [*LAMBDA0, "--data.image_size", "128", "--model.encoder.grid_size", "16"],
    ),
    "lambda0_align": ("configs/shapes.yaml", [*LAMBDA0, "--model.encoder.align_grid", "true"]),
    "lambda0_zero_state": ("configs/shapes.yaml", [*LAMBDA0, "--model.decoder.initial_state", "zero"]),
    "current": ("configs/shapes.yaml", CURRENT),
    "lambda0_current": ("configs/shapes.yaml", [*LAMBDA0, *CURRENT]),
    "lambda0_current_zero_state": (
        "configs/shapes.yaml",
        [*LAMBDA0, *CURRENT, "--model.decoder.initial_state", "zero"],
    ),
    "hard": ("configs/shapes.yaml", HARD),
    "hard_current": ("configs/shapes.yaml", [*HARD, *CURRENT]),
    "hard_lambda0_current_zero_state": (
        "configs/shapes.yaml",
        [*HARD, *LAMBDA0, *CURRENT, "--model.decoder.initial_state", "zero"],
    ),
    "hard_current_expected_baseline": (
        "configs/shapes.yaml",
        [*HARD, *CURRENT, "--model.objective.baseline", "expected_context"],
    ),
    "hard_lambda0_current_zero_state_expected_baseline": (
        "configs/shapes.yaml",
        [
            *HARD,
            *LAMBDA0,
            *CURRENT,
            "--model.decoder.initial_state",
            "zero",
            "--model.objective.baseline",
            "expected_context",
        ],
    ),
    "hard_entropy0.1": ("configs/shapes.yaml", [*HARD, "--model.objective.entropy_lambda", "0.1"]),
    "hard_lambda0": ("configs/shapes.yaml", [*HARD, *LAMBDA0]),
    "hard_lambda0_gate_none": ("configs/shapes.yaml", [*HARD, *LAMBDA0, "--model.decoder.gate", "none"]),
    "hard_gate_none": ("configs/shapes.yaml", [*HARD, "--model.decoder.gate", "none"]),
    "hard_reinforce0.1": ("configs/shapes.yaml", [*HARD, "--model.objective.reinforce_lambda", "0.1"]),
    "hard_recipe": (HARD_RECIPE, []),
    "hard_recipe_scst": (HARD_RECIPE, []),
    "recipe_3ep": ("configs/small_scratch.yaml", ["--trainer.max_epochs", "3"]),
    "recipe": ("configs/small_scratch.yaml", []),
    "recipe_scst": ("configs/small_scratch.yaml", []),
    # The recipe as it was before its grid was aligned (align_grid: true), for the offset before and after.
    "recipe_unaligned": ("configs/small_scratch.yaml", UNALIGNED),
    "recipe_scst_unaligned": ("configs/small_scratch.yaml", UNALIGNED),
}
# Rows trained in two stages: the row's config, then self-critical training layered over it.
SCST_STAGE = "configs/small_scratch_scst.yaml"
WITH_SCST = {"recipe_scst", "hard_recipe_scst", "recipe_scst_unaligned"}
# Family -> the side its study data is drawn at; scenes is larger than the recipes' image_size on purpose.
FAMILIES = {"shapes": 64, "glyphs": 64, "scenes": 96, "photos": 96}
METRICS = (
    "BLEU-4",
    "CIDEr",
    "pointing_game",
    "attention_in_box",
    "chance_pointing_game",
    "grounded_words",
    "mean_length",
    "dangling_endings",
    # Does the word lose its probability first where α ranks the image first (captioner.evaluation.faithfulness;
    # 0.05 is chance), over the words that depend on the image at all (their share beside it)?
    "deletion_faithfulness",
    "object_deletion_faithfulness",
    "object_deletion_dependent_share",
    "object_deletion_lead",
)


def row_commands(row: str, data_dir: Path, run_dir: Path) -> list[list[str]]:
    """The `captioner train` argument lists of `row` on `data_dir`, writing under `run_dir`:
    fit and test, or for a row in `WITH_SCST`, fit, fit the self-critical stage from that, and
    test the second stage."""
    config, overrides = ROWS[row]
    first = [config] if isinstance(config, str) else list(config)
    stages = [first] + ([[*first, SCST_STAGE]] if row in WITH_SCST else [])
    dirs = [run_dir / "cross_entropy", run_dir] if len(stages) == 2 else [run_dir]
    commands = [["fit", *_common(configs, data_dir, out, overrides)] for configs, out in zip(stages, dirs)]
    for later in commands[1:]:
        later += ["--model.init_from", str(dirs[0] / "checkpoints" / "best.ckpt")]
    test = _common(stages[-1], data_dir, run_dir, overrides)
    return [*commands, ["test", *test, "--ckpt_path", str(run_dir / "checkpoints" / "best.ckpt")]]


def _common(configs: list[str], data_dir: Path, out: Path, overrides: list[str]) -> list[str]:
    return [
        *(arg for config in configs for arg in ("--config", config)),
        "--data.data_dir",
        str(data_dir),
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.default_root_dir",
        str(out),
        "--trainer.logger",
        "false",
        "--checkpoint.dirpath",
        str(out / "checkpoints"),
        *overrides,
    ]


def _captioner(args: list[str], log: Path) -> None:
    command = ["nice", "-n", "5", sys.executable, "-m", "captioner.cli", *args]
    with log.open("a") as out:
        subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, check=True)


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_row(row: str, family: str, data_dir: Path, run_dir: Path) -> dict:
    *fits, test = row_commands(row, data_dir, run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    load_before, start, cpu_start = os.getloadavg(), time.perf_counter(), _children_cpu_s()
    for fit in fits:
        _captioner(["train", *fit], run_dir / "fit.log")
    fit_minutes = (time.perf_counter() - start) / 60
    _captioner(["train", *test], run_dir / "test.log")
    metrics = json.loads((run_dir / "checkpoints" / "metrics.json").read_text())
    return {
        "row": row,
        "family": family,
        **{name: metrics.get(f"test/{name}") for name in METRICS},
        "fit_minutes": round(fit_minutes, 2),
        "minutes": round((time.perf_counter() - start) / 60, 2),
        "cpu_minutes": round((_children_cpu_s() - cpu_start) / 60, 2),
        "load_before": [round(v, 2) for v in load_before],
        "load_after": [round(v, 2) for v in os.getloadavg()],
        "commands": [" ".join(["captioner", "train", *args]) for args in (*fits, test)],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("data/study"), help="data sets go in DATA/<family>")
    parser.add_argument("--runs", type=Path, default=Path("runs/study"), help="runs go in RUNS/<family>_<row>")
    parser.add_argument("--rows", nargs="+", choices=sorted(ROWS), default=list(ROWS))
    parser.add_argument("--families", nargs="+", choices=list(FAMILIES), default=list(FAMILIES))
    args = parser.parse_args(argv)
    for family in args.families:
        data_dir = args.data / family
        if not (data_dir / "annotations" / "captions_test.json").exists():
            synth = ["data", "synth", "--kind", family, "--out", str(data_dir), "--size", str(FAMILIES[family])]
            subprocess.run([sys.executable, "-m", "captioner.cli", *synth], check=True, stdout=subprocess.DEVNULL)
        for row in args.rows:
            print(json.dumps(run_row(row, family, data_dir, args.runs / f"{family}_{row}")), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
