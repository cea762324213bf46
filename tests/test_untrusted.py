"""A model folder from a stranger is safe to open (issue 34).

Every hostile folder, checkpoint, --out, recipe name or --config file is one error line with
exit status 2 (the service: never a 5xx, never NaN in its JSON), allocates within a bound
(`bounded_allocation`), and leaves nothing behind.
"""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import stat
import struct
import tempfile
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

from captioner.cli import main
from captioner.errors import CaptionerError
from captioner.inference.api import Captioner
from captioner.inference.export import load_pretrained
from captioner.models import DecoderConfig, EncoderConfig, SequenceEncoderConfig
from captioner.models.captioner import ShowAttendTell
from captioner.serve import CaptionModel, create_app
from captioner.serve.limits import FLAGS
from captioner.vocab import SPECIALS, Vocabulary

# What loading any hostile folder may allocate (tensors and Python objects alike): the tiny
# model it is made from needs about 3 MB of weights, loaded twice at most.
BUDGET = 100 * 2**20


# --- Measuring allocation ------------------------------------------------------------------

# Factory ops whose first argument is the size of the tensor they allocate, or a tensor of that size.
_SIZED_FACTORIES = {"empty", "empty_strided", "zeros", "ones", "full", "rand", "randn"}
_LIKE_FACTORIES = {f"{name}_like" for name in _SIZED_FACTORIES}


class _TensorBudget(TorchDispatchMode):
    """Counts the bytes of every CPU tensor allocated under it, and fails *before* an allocation
    would pass `budget` (so a test of a config asking for 512 TB never asks the system for it)."""

    def __init__(self, budget: int):
        super().__init__()
        self.left = budget

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        if name in _SIZED_FACTORIES and str(kwargs.get("device") or "cpu") != "meta":
            dtype = kwargs.get("dtype") or torch.get_default_dtype()
            self._spend(math.prod(args[0]) * dtype.itemsize, f"{name}{tuple(args[0])}")
        elif name in _LIKE_FACTORIES and str(kwargs.get("device") or args[0].device) != "meta":
            dtype = kwargs.get("dtype") or args[0].dtype
            self._spend(args[0].numel() * dtype.itemsize, f"{name}{tuple(args[0].shape)}")
        elif name == "set_" and len(args) > 1 and isinstance(args[1], torch.UntypedStorage):
            self._spend(args[1].nbytes(), "a storage read from a file")
        return func(*args, **kwargs)

    def _spend(self, nbytes: int, what: str) -> None:
        self.left -= nbytes
        if self.left < 0:
            raise AssertionError(f"allocating {what} ({nbytes:,} bytes) passes the budget")


@contextmanager
def bounded_allocation(budget: int = BUDGET) -> Iterator[None]:
    """Fail when what runs inside allocates more than `budget` bytes of tensors, or its Python
    objects peak above `budget` bytes."""
    tracemalloc.start()
    try:
        with _TensorBudget(budget):
            yield
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < budget, f"Python objects peaked at {peak:,} bytes"


def test_the_budget_catches_a_large_allocation_before_it_happens():
    with pytest.raises(AssertionError, match="passes the budget"), bounded_allocation(2**20):
        torch.nn.Linear(10**5, 10**5)  # 40 GB: refused before it is asked for
    with torch.device("meta"):
        skeleton = torch.nn.Linear(10**5, 10**5)
    with bounded_allocation(2**20), torch.device("meta"):
        torch.nn.Linear(10**5, 10**5)  # the meta device allocates nothing
    with pytest.raises(AssertionError, match="empty_like"), bounded_allocation(2**20):
        skeleton.to_empty(device="cpu")  # how the loader makes a model real


# --- Folders to tamper with -----------------------------------------------------------------


@pytest.fixture(scope="module")
def export_dir(tiny_checkpoint, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("untrusted") / "export"
    assert main(["export", "--ckpt", str(tiny_checkpoint), "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def image(synth_data) -> Path:
    return sorted((synth_data / "test").glob("*.png"))[0]


def split_weights(path: Path) -> tuple[dict, bytes]:
    """(header, tensor bytes) of a safetensors file."""
    raw = path.read_bytes()
    length = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8 : 8 + length]), raw[8 + length :]


def join_weights(header: object, data: bytes) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


def tampered(
    export_dir: Path,
    where: Path,
    config: Callable[[dict], object] | None = None,
    header: Callable[[dict], object] | None = None,
    config_text: str | None = None,
    weights: bytes | None = None,
) -> Path:
    """A copy of the export in `where`, with its config.json and model.safetensors changed:
    `config`/`header` edit the parsed JSON in place (or return a replacement), `config_text` and
    `weights` replace the files' bytes."""
    folder = where / "folder"
    shutil.copytree(export_dir, folder)
    if config is not None:
        parsed = json.loads((folder / "config.json").read_text())
        replaced = config(parsed)
        (folder / "config.json").write_text(json.dumps(parsed if replaced is None else replaced))
    if config_text is not None:
        (folder / "config.json").write_text(config_text)
    if header is not None:
        parsed, data = split_weights(folder / "model.safetensors")
        replaced = header(parsed)
        (folder / "model.safetensors").write_bytes(join_weights(parsed if replaced is None else replaced, data))
    if weights is not None:
        (folder / "model.safetensors").write_bytes(weights)
    return folder


def one_error_line(capsys) -> str:
    """The single `error:` line on stderr; fails on a traceback, other lines or anything on stdout."""
    out, err = capsys.readouterr()
    assert out == "" and "Traceback" not in err, err
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    return err.strip()


def _set(*path: str | int, value: object) -> Callable[[dict], None]:
    def change(config: dict) -> None:
        for key in path[:-1]:
            config = config[key]
        config[path[-1]] = value

    return change


def _grow_vocab(n: int) -> Callable[[dict], None]:
    return lambda config: config["vocab_words"].extend(f"w{i}" for i in range(n))


# --- 1. A config cannot make the loader allocate anything -----------------------------------


@pytest.mark.parametrize(
    "encoder, decoder",
    [
        (EncoderConfig("resnet18"), DecoderConfig()),
        (EncoderConfig("vgg11", coord_channels=True, align_grid=True), DecoderConfig(gate="channel")),
        (EncoderConfig("resnet50", stages=3), DecoderConfig(attention="hard", initial_state="zero")),
        (EncoderConfig("resnet18", channels_last=True), DecoderConfig(attend_from="current", gate="none")),
    ],
)
def test_every_tensor_of_a_model_is_in_its_state_dict(encoder, decoder):
    """The loader builds the model on the meta device and fills it from the weights alone
    (`Module.to_empty`, then a strict load): a tensor outside the state dict would stay unset."""
    with torch.device("meta"):
        model = ShowAttendTell.for_images(encoder, decoder, 100)
    tensors = {name for name, _ in model.named_parameters()} | {name for name, _ in model.named_buffers()}
    assert tensors == set(model.state_dict())


def test_the_bounds_hold_for_training_configs_and_admit_real_models():
    with pytest.raises(CaptionerError, match="hidden_dim must be at most 4096, got 4097"):
        DecoderConfig(hidden_dim=4097)
    with pytest.raises(CaptionerError, match="grid_size must be at most 64, got 65"):
        EncoderConfig(grid_size=65)
    with pytest.raises(CaptionerError, match="embed_dim must be at most 4096"):
        SequenceEncoderConfig(embed_dim=10**6)
    with pytest.raises(CaptionerError, match="vocabulary_size must be at most 100000, got 100001"):
        Vocabulary([*SPECIALS, *(f"w{i}" for i in range(100_001 - len(SPECIALS)))])
    # COCO's ResNet-101 model, and the largest model the bounds allow, are settings a config may give.
    with torch.device("meta"):
        ShowAttendTell.for_images(EncoderConfig("resnet101", grid_size=14), DecoderConfig(), 10_000)
        widest = DecoderConfig(embed_dim=4096, hidden_dim=4096, attention_dim=4096)
        ShowAttendTell.for_images(EncoderConfig("resnet152", grid_size=64), widest, 100_000)


CONFIG_LIES = {
    "hidden_dim 1e9": (_set("decoder", "hidden_dim", value=10**9), "hidden_dim must be at most 4096"),
    "hidden_dim 1e5": (_set("decoder", "hidden_dim", value=10**5), "hidden_dim must be at most 4096"),
    "grid_size 1e6": (_set("encoder", "grid_size", value=10**6), "grid_size must be at most 64"),
    "200k more words": (_grow_vocab(200_000), "vocabulary_size must be at most 100000"),
    "image size 1e6": (_set("image", "size", value=10**6), "image_size must be at most 2048"),
    # Within the bounds, but not what the weights are: the lie is the first tensor that disagrees.
    "hidden_dim 1024": (
        _set("decoder", "hidden_dim", value=1024),
        "its weights do not fit the model its settings describe: they hold decoder.attention.hidden_proj.weight "
        "as float32 (32, 32), where the settings give float32 (32, 1024)",
    ),
    "one more word": (_grow_vocab(1), "decoder.embedding.weight as float32"),
    "image as a string": (_set("image", value="448"), "image must be an object with size, mean and std, not a str"),
    "hidden_dim a string": (_set("decoder", "hidden_dim", value="32"), "hidden_dim must be an integer >= 1"),
    "vocabulary of numbers": (_set("vocab_words", 5, value=7), "a vocabulary holds words (strings), not ints"),
}


@pytest.mark.parametrize("case", CONFIG_LIES)
def test_a_config_that_lies_is_one_line_and_allocates_nothing_large(export_dir, image, tmp_path, capsys, case):
    change, message = CONFIG_LIES[case]
    folder = tampered(export_dir, tmp_path, config=change)
    with bounded_allocation():
        assert main(["caption", "--model", str(folder), str(image)]) == 2
    line = one_error_line(capsys)
    assert message in line, line
    assert "retrain" not in line and "does not fit this version" not in line  # it is the folder, not the version


@pytest.mark.parametrize(
    "text, message",
    [
        ("[" * 200_000, "nested deeper than 32 levels"),
        ('{"a": ' * 100 + "1" + "}" * 100, "nested deeper than 32 levels"),
        ('{"format": NaN}', "NaN is not a JSON number"),
        ('{"format": 1e999}', "too large for a float"),
        ('{"format": ' + "9" * 5000 + "}", "is not valid JSON"),
        ("\xff\xfe{}", "is not valid JSON"),
        ('["a list"]', "holds a JSON list, not an object"),
        ('{"x": "' + "a" * (17 * 2**20) + '"}', "is over 16,777,216 bytes"),
    ],
    ids=["200k-brackets", "deep-objects", "nan", "inf", "5000-digits", "not-utf8", "a-list", "17-MB"],
)
def test_a_config_json_that_is_no_config_is_one_line(export_dir, image, tmp_path, capsys, text, message):
    folder = tampered(export_dir, tmp_path, config_text=text)
    with bounded_allocation():
        assert main(["caption", "--model", str(folder), str(image)]) == 2
    line = one_error_line(capsys)
    assert message in line and str(folder / "config.json") in line, line


def test_a_checkpoint_whose_settings_lie_is_one_line(tiny_checkpoint, image, tmp_path, capsys):
    checkpoint = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)
    checkpoint["hyper_parameters"]["decoder"]["hidden_dim"] = 10**5
    path = tmp_path / "lying.ckpt"
    torch.save(checkpoint, path)
    with bounded_allocation():
        assert main(["caption", "--ckpt", str(path), str(image)]) == 2
    assert "hidden_dim must be at most 4096, got 100000" in one_error_line(capsys)


# --- The header of model.safetensors, read before any tensor ---------------------------------


def _first_tensor(header: dict) -> dict:
    return next(entry for name, entry in header.items() if name != "__metadata__")


WEIGHT_LIES = {
    "header of 1e15 bytes": (struct.pack("<Q", 10**15) + b"{}", "its header would be 1,000,000,000,000,000 bytes"),
    "3 bytes": (b"abc", "it is 3 bytes long"),
    "cut in its header": (struct.pack("<Q", 100) + b'{"a":', "it ends inside its header"),
    "200k brackets": (struct.pack("<Q", 200_000) + b"[" * 200_000, "nested deeper than 32 levels"),
    "a list": (join_weights([1, 2], b""), "its header is not a JSON object"),
    "5000 tensors": (
        lambda h: {f"t{i}": _first_tensor(h) for i in range(5000)},
        "it declares 5,000 tensors, over the 4,096",
    ),
    "a 1e9 x 1e9 tensor": (
        lambda h: h["decoder.embedding.weight"].update(shape=[10**9, 10**9]),
        "they hold decoder.embedding.weight as float32 (1000000000, 1000000000), where the settings give",
    ),
    "dtype F128": (lambda h: h["decoder.embedding.weight"].update(dtype="F128"), "has dtype 'F128', not one of"),
    "shape of strings": (lambda h: h["decoder.embedding.weight"].update(shape=["a"]), "has shape ['a']"),
    "a missing tensor": (
        lambda h: {name: entry for name, entry in h.items() if name != "decoder.out_vocab.bias"},
        "its weights do not fit the model its settings describe: they lack decoder.out_vocab.bias",
    ),
    "an extra tensor": (
        lambda h: h.update(extra=h["decoder.out_vocab.bias"]),
        "they hold 'extra', which that model has no place for",
    ),
    "offsets past the end": (
        lambda h: h["decoder.out_vocab.bias"].update(data_offsets=[0, 10**12]),
        "model.safetensors is damaged",
    ),
}


@pytest.mark.parametrize("case", WEIGHT_LIES)
def test_weights_whose_header_lies_are_one_line(export_dir, image, tmp_path, capsys, case):
    change, message = WEIGHT_LIES[case]
    kind = "weights" if isinstance(change, bytes) else "header"
    folder = tampered(export_dir, tmp_path, **{kind: change})
    with bounded_allocation():
        assert main(["caption", "--model", str(folder), str(image)]) == 2
    line = one_error_line(capsys)
    assert message in line, line


# --- 2. Non-finite weights are refused; no answer of the service carries NaN ----------------


def _poison(folder: Path, name: str, value: float) -> None:
    header, data = split_weights(folder / "model.safetensors")
    start = header[name]["data_offsets"][0] + 4 * 3  # the fourth float of the tensor
    data = data[:start] + struct.pack("<f", value) + data[start + 4 :]
    (folder / "model.safetensors").write_bytes(join_weights(header, data))


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_an_export_with_non_finite_weights_is_refused(export_dir, image, tmp_path, capsys, value):
    folder = tampered(export_dir, tmp_path)
    _poison(folder, "decoder.lstm.weight_hh", value)
    assert main(["caption", "--model", str(folder), str(image)]) == 2
    line = one_error_line(capsys)
    assert "its weights hold NaN or infinite values, the first in decoder.lstm.weight_hh" in line


def test_a_checkpoint_with_non_finite_weights_is_refused(tiny_checkpoint, image, tmp_path, capsys):
    checkpoint = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)
    checkpoint["state_dict"]["model.decoder.out_vocab.bias"][2] = math.nan
    path = tmp_path / "nan.ckpt"
    torch.save(checkpoint, path)
    assert main(["caption", "--ckpt", str(path), str(image)]) == 2
    assert "NaN or infinite values, the first in decoder.out_vocab.bias" in one_error_line(capsys)


def _strict_json(text: str) -> object:
    def refuse(name: str) -> None:
        raise AssertionError(f"{name} in an answer")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize("flags", [{}, dict.fromkeys(FLAGS, "1")], ids=["plain", "every-option"])
def test_a_model_that_computes_nan_never_puts_it_in_json(tiny_checkpoint, image, flags):
    captioner = Captioner.from_checkpoint(tiny_checkpoint, device="cpu")
    with torch.no_grad():  # weights that load finite but overflow when used
        for parameter in captioner.model.decoder.parameters():
            parameter.fill_(3e38)
    model = CaptionModel(captioner, checkpoint=tiny_checkpoint)
    files = [("images", ("a.png", image.read_bytes(), "image/png"))]
    with TestClient(create_app(model)) as client:
        answer = client.post("/v1/captions", files=files, data=flags)
        model.info["metrics"] = {"test/CIDEr": math.nan, "test/BLEU-4": math.inf}  # any route, any number
        info = client.get("/v1/model")
    assert answer.status_code == 200, answer.text
    result = _strict_json(answer.text)["results"][0]
    assert math.isnan(captioner.caption(image)[0].score) and result["score"] is None
    assert info.status_code == 200 and _strict_json(info.text)["metrics"] == {"test/CIDEr": None, "test/BLEU-4": None}


# --- 3. `captioner export`: whole folders, one-line errors, the permissions of its siblings --


def _export(ckpt: Path, out: Path | str) -> int:
    return main(["export", "--ckpt", str(ckpt), "--out", str(out)])


def _nothing_beside(folder: Path) -> None:
    """No temporary folder of an export is left in `folder`."""
    assert not [p.name for p in folder.iterdir() if p.name.endswith((".partial", ".replaced"))]


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
@pytest.mark.parametrize("out", ["/proc/captioner-export", "/proc/self/captioner-export", "/proc"])
def test_export_to_a_virtual_file_system_is_one_line(tiny_checkpoint, capsys, out):
    assert _export(tiny_checkpoint, out) == 2
    line = one_error_line(capsys)
    assert line.startswith(f"error: --out {out} ") and "name a" in line
    assert not Path(out, "model.safetensors").exists()


def test_export_under_a_file_is_one_line_and_makes_nothing(tiny_checkpoint, tmp_path, capsys):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("mine")
    assert _export(tiny_checkpoint, blocker / "sub" / "export") == 2
    assert f"lies under {blocker}, which is a file" in one_error_line(capsys)
    assert _export(tiny_checkpoint, blocker) == 2
    assert "is a file" in one_error_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"] and blocker.read_text() == "mine"


@pytest.mark.parametrize("stranger", ["config.json/", "notes.txt", ".git/"])
def test_export_never_replaces_a_folder_holding_other_things(tiny_checkpoint, tmp_path, capsys, stranger):
    out = tmp_path / "out"
    out.mkdir()
    if stranger.endswith("/"):
        (out / stranger).mkdir()
        (out / stranger / "kept").write_text("mine")
    else:
        (out / stranger).write_text("mine")
    assert _export(tiny_checkpoint, out) == 2
    line = one_error_line(capsys)
    assert f"holds {stranger.rstrip('/')}" in line and "name a new folder" in line
    assert [p.name for p in out.iterdir()] == [stranger.rstrip("/")]  # untouched, nothing added
    _nothing_beside(tmp_path)


def test_a_failed_export_leaves_the_earlier_one_as_it_was(tiny_checkpoint, tmp_path, capsys, monkeypatch):
    out = tmp_path / "export"
    assert _export(tiny_checkpoint, out) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    written = []
    real_write = Path.write_bytes

    def disk_fills_up(self, data):
        if written:  # the second file does not fit
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        written.append(self)
        return real_write(self, data)

    monkeypatch.setattr(Path, "write_bytes", disk_fills_up)
    assert _export(tiny_checkpoint, out) == 2
    monkeypatch.undo()
    assert f"--out {out} cannot be written (No space left on device)" in one_error_line(capsys)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    _nothing_beside(tmp_path)
    # The same into a new folder: nothing at all is left.
    monkeypatch.setattr(Path, "write_bytes", disk_fills_up)
    assert _export(tiny_checkpoint, tmp_path / "new") == 2
    monkeypatch.undo()
    assert not (tmp_path / "new").exists()
    _nothing_beside(tmp_path)


def test_re_export_keeps_no_stale_metrics(tiny_checkpoint, tmp_path, monkeypatch):
    measured, unmeasured = tmp_path / "measured", tmp_path / "unmeasured"
    for run in (measured, unmeasured):
        run.mkdir()
        shutil.copy(tiny_checkpoint, run / "best.ckpt")
    (measured / "metrics.json").write_text(json.dumps({"test/CIDEr": 9.5}))
    out = tmp_path / "export"
    assert _export(measured / "best.ckpt", out) == 0
    assert (out / "metrics.json").exists()
    assert _export(unmeasured / "best.ckpt", out) == 0
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert "Not measured" in (out / "README.md").read_text()
    model = CaptionModel(Captioner.from_pretrained(out, device="cpu"), checkpoint=out)
    assert model.info["metrics"] is None  # /v1/model reports no numbers the model never earned
    _nothing_beside(tmp_path)


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_every_exported_file_has_the_same_permissions(tiny_checkpoint, tmp_path, umask):
    (tmp_path / "run").mkdir()
    shutil.copy(tiny_checkpoint, tmp_path / "run" / "best.ckpt")
    (tmp_path / "run" / "metrics.json").write_text("{}")
    old = os.umask(umask)
    try:
        assert _export(tmp_path / "run" / "best.ckpt", tmp_path / "export") == 0
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "export").iterdir()}
    assert set(modes.values()) == {0o666 & ~umask}, modes
    assert stat.S_IMODE((tmp_path / "export").stat().st_mode) == 0o777 & ~umask


# --- 4. Recipe names are names; a --config file that is no recipe is never printed -----------


@pytest.mark.parametrize(
    "name, message",
    [
        ("../../etc/passwd", "is a path, not a recipe name"),
        ("/etc/hostname", "is a path, not a recipe name"),
        ("foo.yaml", "is a path, not a recipe name"),
        ("shapes.yaml", "is a path, not a recipe name (the recipe 'shapes'?)"),
        ("no_such_recipe", "is not a recipe; the recipes: "),
    ],
)
def test_recipes_takes_names_only(tmp_path, capsys, name, message):
    (tmp_path / "foo.yaml").write_text("secret: 1\n")  # a file the name could reach: never printed
    assert main(["recipes", name]) == 2
    line = one_error_line(capsys)
    assert message in line and "shapes" in line and "secret" not in line


SECRET = "root:x:0:0:hunter2:/root:/bin/bash\nalice:x:1000:1000::/home/alice:/bin/sh\n"


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: d / "passwd", "is plain text, not settings by name"),
        (lambda d: d / "list.yaml", "is a list, not settings by name"),
        (lambda d: d / "broken.yaml", "is not valid YAML (line 3, column 1)"),
        (lambda d: d / "binary.yaml", "is not a text file"),
        (lambda d: d / "huge.yaml", "is over 1,048,576 bytes"),
        (lambda d: d, "is a folder"),
        (lambda d: d / "missing.yaml", "does not exist"),
        (lambda d: d / "fifo.yaml", "is not a regular file"),
    ],
    ids=["passwd", "list", "broken", "binary", "huge", "folder", "missing", "fifo"],
)
def test_a_config_file_that_is_no_recipe_is_one_line_never_echoed(tmp_path, capsys, make, message):
    (tmp_path / "passwd").write_text(SECRET)
    (tmp_path / "list.yaml").write_text("- hunter2\n- alice\n")
    (tmp_path / "broken.yaml").write_text("trainer:\n  max_epochs: [hunter2\n")
    (tmp_path / "binary.yaml").write_bytes(b"\xff\xfehunter2\x00")
    (tmp_path / "huge.yaml").write_text("# hunter2\n" * 200_000)
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "fifo.yaml")  # opening it would wait for a writer forever
    path = make(tmp_path)
    if path.name == "fifo.yaml" and not path.exists():
        pytest.skip("named pipes are POSIX")
    assert main(["train", "fit", "--config", str(path)]) == 2
    line = one_error_line(capsys)
    assert f"--config {path} {message}" in line
    assert "hunter2" not in line and "alice" not in line


# --- 5. attend --out that cannot be written -------------------------------------------------


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
@pytest.mark.parametrize("out", ["/proc/captioner-overlays", "/proc"])
def test_attend_to_a_virtual_file_system_is_one_line(tiny_checkpoint, image, capsys, out):
    assert main(["attend", "--ckpt", str(tiny_checkpoint), str(image), "--out", out]) == 2
    line = one_error_line(capsys)
    assert f"--out {out} cannot be written" in line and "name a folder you can write" in line


# --- 7. Any config.json and header: one CaptionerError or a model, within the budget --------

_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.sampled_from([0, -1, 1, 4, 64, 65, 4096, 4097, 10**6, 10**9, 2**63])
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=8,
)
# Settings that size something, and sizes: each edit is one of these half the time.
_SIZE_KEYS = [
    ("encoder", "grid_size"),
    ("encoder", "stages"),
    ("decoder", "hidden_dim"),
    ("decoder", "embed_dim"),
    ("decoder", "attention_dim"),
    ("decoding", "beam_size"),
    ("decoding", "max_len"),
    ("image", "size"),
]
_SIZES = st.sampled_from([0, -1, 5, 33, 65, 1024, 2049, 4097, 10**5, 10**9, 2**62]) | st.integers(-(2**70), 2**70)
_CONFIG_KEYS = [
    *_SIZE_KEYS,
    ("encoder", "backbone"),
    ("encoder", "coord_channels"),
    ("encoder", "fine_tune"),
    ("encoder",),
    ("decoder", "dropout"),
    ("decoder", "gate"),
    ("decoder", "unknown"),
    ("image", "mean"),
    ("image",),
    ("vocab_words",),
    ("vocab_words", 7),
    ("format_version",),
]
_SHAPES = st.lists(st.integers(min_value=0, max_value=2**62) | st.sampled_from([32, 64, 128]), max_size=9)


@st.composite
def hostile_folders(draw) -> tuple[list, list, bytes | None, str | None]:
    """(config edits, header edits, a replacement weights prefix, a replacement config text).
    Most folders have one kind of lie (a lie found early would hide the others), some all kinds."""
    kinds = draw(st.sampled_from([{"config"}, {"config"}, {"header"}, {"prefix"}, {"text"}, {"all"}]))
    everything = "all" in kinds
    edit = st.tuples(st.sampled_from(_SIZE_KEYS), _SIZES) | st.tuples(st.sampled_from(_CONFIG_KEYS), _JSON)
    config_edits = draw(st.lists(edit, min_size=1, max_size=3)) if everything or "config" in kinds else []
    header_edit = st.tuples(
        st.integers(min_value=0, max_value=100),  # which tensor (modulo their number)
        st.sampled_from(["dtype", "shape", "data_offsets", "entry"]),
        st.one_of(_JSON, _SHAPES, st.sampled_from(["F32", "F16", "I64", "BOOL", "F8_E4M3"])),
    )
    header_edits = draw(st.lists(header_edit, min_size=1, max_size=3)) if everything or "header" in kinds else []
    prefix = None
    if everything or "prefix" in kinds:
        length = st.integers(0, 2**64 - 1).map(lambda n: n.to_bytes(8, "little"))
        prefix = draw(st.binary(max_size=12) | length)
    text = None
    if everything or "text" in kinds:
        depth = draw(st.integers(min_value=1, max_value=300_000))
        text = "[" * depth + "]" * draw(st.integers(0, depth))
    return config_edits, header_edits, prefix, text


def _apply_config_edits(config: dict, edits: list) -> None:
    for path, value in edits:
        target = config
        for key in path[:-1]:
            target = target[key]
        if isinstance(target, dict) or (isinstance(target, list) and isinstance(path[-1], int)):
            target[path[-1]] = value


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=hostile_folders())
def test_any_hostile_folder_is_one_captioner_error_within_the_budget(export_dir, case):
    config_edits, header_edits, prefix, config_text = case
    header, data = split_weights(export_dir / "model.safetensors")
    names = [name for name in header if name != "__metadata__"]
    for index, field, value in header_edits:
        name = names[index % len(names)]
        if field == "entry":
            header[name] = value
        elif isinstance(header[name], dict):
            header[name][field] = value
    weights = join_weights(header, data)
    if prefix is not None:
        weights = prefix + weights[len(prefix) :] if len(prefix) == 8 else prefix
    with tempfile.TemporaryDirectory() as where:
        folder = tampered(
            export_dir,
            Path(where),
            config=lambda config: _apply_config_edits(config, config_edits),
            config_text=config_text,
            weights=weights,
        )
        with bounded_allocation():
            try:
                load_pretrained(folder)
            except CaptionerError as error:
                assert "\n" not in str(error) and len(str(error)) < 1000, str(error)


def test_the_hostile_load_benchmark_refuses_every_lie(tiny_checkpoint, capsys):
    from benchmarks import hostile_load

    report = hostile_load.main(["--ckpt", str(tiny_checkpoint), "--words", "1"])
    assert json.loads(capsys.readouterr().out) == report
    outcomes = {name: case["outcome"] for name, case in report["cases"].items()}
    assert outcomes.pop("genuine") == "loaded"
    assert outcomes and all(outcome != "loaded" for outcome in outcomes.values()), outcomes
    assert all(case["seconds"] >= 0 for case in report["cases"].values())
