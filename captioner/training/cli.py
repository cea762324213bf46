"""The Lightning CLI over `CaptioningModule` and `CaptionDataModule` (`captioner train`, `python
train.py`), with subcommands fit / validate / test / predict.

    captioner train fit --config configs/shapes.yaml
    captioner train test --config configs/shapes.yaml --ckpt_path runs/demo/checkpoints/best.ckpt
    captioner train fit --config configs/shapes.yaml --ckpt_path last    # resume
"""

from __future__ import annotations

import json
import pickle
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

from pytorch_lightning import Trainer
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from pytorch_lightning.plugins import TorchCheckpointIO

from captioner.data import CaptionDataModule
from captioner.errors import CaptionerError
from captioner.inference.checkpoint import load_checkpoint, pickled_code, refused_global, upgrade_hparams
from captioner.recipes import resolve_config_args
from captioner.training.checkpoint_io import AtomicCheckpointIO
from captioner.training.predictions import CaptionWriter
from captioner.training.runtime import Runtime
from captioner.training.system import CaptioningModule


class CaptionerCLI(LightningCLI):
    """LightningCLI with the vocabulary linked from data to model, and two checkpoints:
    `best.ckpt` (highest val/CIDEr) and `last.ckpt` (end of the latest epoch, for resuming).

    Lightning's own `save_last` only refreshes last.ckpt in epochs where the best one
    improved, so "last" is a second, unmonitored ModelCheckpoint in the same folder. Both are
    written atomically (`AtomicCheckpointIO`), so a crash while saving leaves the previous file.
    `validate` and `test` with a --ckpt_path write their metrics beside it, as
    val_metrics.json and metrics.json. `predict` writes the captions of the data's test split
    as JSON lines to --predictions.path (default: predictions.jsonl in the trainer's
    default_root_dir), in order, each image once, however many processes (`CaptionWriter`).
    """

    def instantiate_trainer(self, **kwargs) -> Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # keep a CheckpointIO the user chose
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        return trainer

    # The metric `best.ckpt` keeps the highest of.
    monitor = "val/CIDEr"

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        self.link_data_to_model(parser)
        self.add_checkpoints(parser)
        parser.add_lightning_class_args(Runtime, "runtime")
        parser.add_lightning_class_args(CaptionWriter, "predictions")

    def link_data_to_model(self, parser: LightningArgumentParser) -> None:
        # The data module builds the vocabulary from its training split when instantiated;
        # the model needs its words (and so its size) before it can build its output layer.
        parser.link_arguments("data.vocab_words", "model.vocab_words", apply_on="instantiate")
        parser.link_arguments("data.image_size", "model.image_size")

    def add_checkpoints(self, parser: LightningArgumentParser) -> None:
        """`checkpoint` (best.ckpt, highest `monitor`) and `last_checkpoint` (last.ckpt), one folder."""
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.add_lightning_class_args(ModelCheckpoint, "last_checkpoint")
        parser.link_arguments("checkpoint.dirpath", "last_checkpoint.dirpath")
        parser.set_defaults(
            {
                "checkpoint.monitor": self.monitor,
                "checkpoint.mode": "max",
                "checkpoint.filename": "best",
                "checkpoint.save_top_k": 1,
                "checkpoint.enable_version_counter": False,
                "last_checkpoint.filename": "last",
                "last_checkpoint.save_top_k": 1,
                "last_checkpoint.enable_version_counter": False,
            }
        )

    def _parse_ckpt_path(self) -> None:
        """Lightning's: a --ckpt_path file's hyper-parameters become the model's settings. Here the
        file is read once, through `load_checkpoint`, so a missing, damaged or foreign file is one
        error line in the inference commands' words rather than torch's traceback, and the
        settings are brought to today's layout (`upgrade_hparams`), so that checkpoints written
        by earlier versions still test, validate and predict. Named checkpoints ("last", ...)
        and remote paths are Lightning's to resolve later."""
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        named = ckpt_path in (None, "last", "best", "hpc") or str(ckpt_path).startswith("registry")
        if named or "://" in str(ckpt_path):
            return
        hparams = load_checkpoint(ckpt_path)["hyper_parameters"]
        hparams.pop("_instantiator", None)
        if not hparams:
            return
        hparams = upgrade_hparams(hparams)
        # A class named by a file is imported to be checked: only captioner's, or one the config names.
        named = (hparams.get("objective") or {}).get("class_path", "captioner.")
        chosen = self.config[subcommand].get("model.objective")
        if not named.startswith("captioner.") and named != (chosen or {}).get("class_path"):
            raise CaptionerError(
                f"--ckpt_path {ckpt_path} names its objective {named}, which is not captioner's: name it in the "
                f"config (model.objective.class_path: {named}) if you trust that code"
            )
        self.config = self.parser.parse_object({subcommand: {"model": hparams}}, self.config)

    def before_fit(self) -> None:
        self._check_resume()

    def before_validate(self) -> None:
        self._check_resume()

    def before_test(self) -> None:
        self._check_resume()

    def before_predict(self) -> None:
        self._check_resume()

    def _check_resume(self) -> None:
        """`--ckpt_path last` must find a last.ckpt, where Lightning would only warn (with a hint
        about `save_last` that does not apply here) and start from scratch."""
        if self.config_init[self.subcommand].get("ckpt_path") != "last":
            return
        found = set().union(
            *(callback._find_last_checkpoints(self.trainer) for callback in self.trainer.checkpoint_callbacks)
        )
        if not found:
            folders = sorted({str(callback.dirpath) for callback in self.trainer.checkpoint_callbacks})
            raise CaptionerError(
                f"--ckpt_path last: there is nothing to resume, no last.ckpt in {', '.join(folders) or 'the run'}; "
                "drop --ckpt_path to train from scratch, or pass the checkpoints folder of the run to resume "
                "(--checkpoint.dirpath)"
            )

    def after_predict(self) -> None:
        writer = next(c for c in self.trainer.callbacks if isinstance(c, CaptionWriter))
        if self.trainer.is_global_zero and writer.written is not None:
            print(f"wrote {writer.written}")

    def after_validate(self) -> None:
        self._write_metrics("val/", "val_metrics.json")

    def after_test(self) -> None:
        self._write_metrics("test/", "metrics.json")

    def _write_metrics(self, prefix: str, filename: str) -> None:
        """Write the metrics named `prefix...` as `filename` beside the checkpoint evaluated (rank 0)."""
        ckpt_path = self.config_init[self.subcommand].get("ckpt_path")
        if not ckpt_path or not self.trainer.is_global_zero:
            return
        metrics = {
            name: float(value) for name, value in self.trainer.callback_metrics.items() if name.startswith(prefix)
        }
        resolved = Path(self.trainer.ckpt_path or ckpt_path)
        out = resolved.with_name(filename)
        out.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
        print(f"wrote {out}")


def start_cli(
    cli_class: type[CaptionerCLI],
    model_class: type,
    data_class: type,
    args: list[str] | None,
    run: bool,
    prog: str,
) -> CaptionerCLI:
    """Run `cli_class` over the model and data classes; `args=None` reads sys.argv (tests pass a
    list). With `run=False` it only parses `args` (no subcommand) and instantiates the data,
    model and trainer, which then writes no config.yaml (it is not a training run). A --config
    may name a recipe (`captioner.recipes`) instead of a file. `prog` is the command as typed
    (`captioner train`), for usage lines and the tips under errors."""
    args = resolve_config_args(sys.argv[1:] if args is None else args)
    with warnings.catch_warnings():
        # `captioner train ...` hands over its own argv slice, which this warning mistakes
        # for a clash with sys.argv.
        warnings.filterwarnings("ignore", "LightningCLI's args parameter is intended")
        return cli_class(
            model_class,
            data_class,
            args=args,
            run=run,
            save_config_callback=SaveConfigCallback if run else None,
            seed_everything_default=0,
            save_config_kwargs={"overwrite": True},
            parser_kwargs={"prog": prog},
        )


def cli_main(args: list[str] | None = None, *, run: bool = True, prog: str = "captioner train") -> CaptionerCLI:
    """The captioning CLI (`start_cli` over `CaptioningModule` and `CaptionDataModule`)."""
    return start_cli(CaptionerCLI, CaptioningModule, CaptionDataModule, args, run, prog)


def run_cli(start: Callable[[], object]) -> int:
    """Run a Lightning CLI (`start()`); a user's mistake is one `error:` line and exit status 2."""
    try:
        start()
    except CaptionerError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except pickle.UnpicklingError as error:
        # Lightning loads --ckpt_path with torch's default weights_only=True, which refuses
        # pickled code; torch's own message would suggest turning that safety off.
        forbidden = refused_global(error)
        found = pickled_code(forbidden) if forbidden else "it is damaged or holds objects besides tensors and data"
        print(
            f"error: the --ckpt_path checkpoint was refused: {found}; use a checkpoint written by "
            "`captioner train fit` from a source you trust",
            file=sys.stderr,
        )
        return 2
    return 0
