"""Mixed precision on the fused decoder (`--trainer.precision bf16-mixed`, or `16-mixed` on
CUDA): the products run in 16 bits and nothing else does, the fast paths are the ones taken,
decoding keeps float32, and training runs so from the command line, from images and from cached
features. How close the numbers come to the float64 reference: tests/test_decoder_reference.py.
"""

from __future__ import annotations

import collections
import warnings
from types import SimpleNamespace

import pytest
import torch
from pytorch_lightning.plugins.precision import MixedPrecision
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from captioner.cli import main
from captioner.models import DecoderConfig, EncoderConfig, FusedDecoder, fused
from captioner.models.search import DecodingConfig, decode_captions, sample_captions
from captioner.training import runtime, system
from captioner.training.cli import cli_main
from captioner.training.loss import caption_loss
from captioner.training.objectives import HardAttention
from captioner.training.system import CaptioningModule
from captioner.vocab import Vocabulary
from tests.fixtures import TINY_MODEL

V, D, H, A, P, B, T = 40, 48, 24, 16, 9, 4, 6
SIXTEEN_BITS = (torch.bfloat16, torch.float16)
# Attending from the previous state, the order whose training runs the hand-written time loop.
PAPER_ORDER = ["--model.decoder.attend_from", "previous"]
aten = torch.ops.aten
PRODUCTS = {aten.mm, aten.addmm, aten.bmm, aten.baddbmm}


class Precisions(TorchDispatchMode):
    """What ran in which precision: the FLOPs of matrix products by dtype (`flops`), and every
    op other than a product, cast or view that gave a 16-bit tensor (`rounded`), or that cast a
    16-bit copy made by a cast back up, a round trip that would round, say, the state (`round_trips`)."""

    def __init__(self) -> None:
        super().__init__()
        self.flops: collections.Counter[torch.dtype] = collections.Counter()
        self.rounded: collections.Counter[str] = collections.Counter()
        self.round_trips = 0
        self._casts: dict[int, torch.Tensor] = {}  # 16-bit casts by storage (views share it), kept alive

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        packet, outputs = func.overloadpacket, _sixteen_bits(out)
        if packet in PRODUCTS:  # mm(a, b), bmm(a, b), addmm(c, a, b), baddbmm(c, a, b)
            a, b = args[-2], args[-1]
            self.flops[a.dtype] += 2 * a.numel() * b.size(-1)
        elif packet is aten._to_copy:
            casts = [t for t in _sixteen_bits(args) if t.untyped_storage().data_ptr() in self._casts]
            self.round_trips += bool(casts) and not outputs
            self._casts |= {t.untyped_storage().data_ptr(): t for t in outputs}
        elif outputs and not func.is_view:
            self.rounded[str(packet)] += 1
        return out

    def share(self, dtype: torch.dtype) -> float:
        return self.flops[dtype] / sum(self.flops.values())


def _sixteen_bits(tree) -> list[torch.Tensor]:
    return [t for t in tree_leaves(tree) if isinstance(t, torch.Tensor) and t.dtype in SIXTEEN_BITS]


def _decoder(seed: int = 0, **settings) -> FusedDecoder:
    torch.manual_seed(seed)
    # The paper's order unless asked: it runs the hand-written time loop.
    settings = {"attend_from": "previous", "initial_state": "mean", **settings}
    config = DecoderConfig(embed_dim=H, hidden_dim=H, attention_dim=A, dropout=0.1, **settings)
    return FusedDecoder(config, V, D).train()


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    return torch.randn(B, P, D), torch.randint(3, V, (B, T + 1))


def _graph(tensor: torch.Tensor) -> set[str]:
    """Names of the autograd nodes behind `tensor`."""
    names, stack, seen = set(), [tensor.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.add(node.name())
        stack.extend(next_node for next_node, _ in node.next_functions)
    return names


def _teacher_forced(decoder, features, tokens):
    logits, alphas = decoder(features, tokens[:, :-1])
    assert logits.dtype == alphas.dtype == torch.float32
    return caption_loss(logits, tokens[:, 1:], alphas, pad_id=0).total


def _hard(decoder, features, tokens):
    objective = HardAttention(
        attention_lambda=1.0,
        baseline="expected_context" if decoder.config.attend_from == "current" else "moving_average",
    )
    out = decoder.forward_hard(
        features, tokens[:, :-1], expected_prob=0.5, with_expected_logits=objective.expected_context_baseline
    )
    assert out.logits.dtype == out.location_log_probs.dtype == out.entropies.dtype == torch.float32
    return objective.loss(out, tokens[:, 1:])[0]


def _sampled(decoder, features, tokens):
    drawn = sample_captions(decoder, features, start_id=1, end_id=2, pad_id=0, samples=3, max_len=T)
    assert drawn.log_probs.dtype == torch.float32
    return -drawn.log_probs.sum()


@pytest.mark.parametrize("low", [torch.bfloat16, torch.float16], ids=["bfloat16", "float16"])
@pytest.mark.parametrize("attend_from", ["previous", "current"])
@pytest.mark.parametrize("objective", [_teacher_forced, _hard, _sampled])
def test_only_the_products_run_in_16_bits(objective, attend_from, low):
    # The recurrent state, attention energies and softmax, sums over steps and positions, the
    # loss and every gradient stay float32: no op but a product (or a cast) gives a 16-bit
    # tensor, forward or backward. Where the paper's order runs, almost all FLOPs are in 16 bits.
    attention = "hard" if objective is _hard else "soft"
    decoder, (features, tokens) = _decoder(attend_from=attend_from, attention=attention), _inputs()
    precisions = Precisions()
    with precisions:
        with torch.autocast("cpu", dtype=low):
            loss = objective(decoder, features, tokens)
        assert loss.dtype == torch.float32
        loss.backward()
    assert not precisions.rounded, f"16-bit results outside the products: {dict(precisions.rounded)}"
    assert precisions.round_trips == 0
    assert precisions.flops[low] > 0
    if attend_from == "previous":
        assert precisions.share(low) > 0.9
    for name, parameter in decoder.named_parameters():
        if parameter.grad is not None:  # an unsampled hard decoder's expected rows, say
            assert parameter.grad.dtype == torch.float32 and torch.isfinite(parameter.grad).all(), name


@pytest.mark.parametrize("low", [torch.bfloat16, torch.float16], ids=["bfloat16", "float16"])
def test_the_hand_written_time_loop_runs_under_autocast_with_16_bit_matrices(low, monkeypatch):
    matrices = []
    apply = fused._TimeLoop.apply

    def spy(*args):
        matrices.append(args[-2:])  # the 16-bit copies of W_ih[:, E:] and [W_hh; W_h; f_β]
        return apply(*args)

    monkeypatch.setattr(fused._TimeLoop, "apply", spy)
    decoder, (features, tokens) = _decoder(), _inputs()
    with torch.autocast("cpu", dtype=low):
        logits, _ = decoder(features, tokens[:, :-1])
    assert "_TimeLoopBackward" in _graph(logits)
    assert [(a.dtype, b.dtype) for a, b in matrices] == [(low, low)]


@pytest.mark.parametrize("attend_from", ["previous", "current"])
@pytest.mark.parametrize("beam_size", [1, 3])
def test_captions_are_decoded_in_float32_under_autocast(attend_from, beam_size):
    # Validation in a bf16-mixed run decodes under autocast, from features a 16-bit encoder gave.
    decoder, (features, _) = _decoder(attend_from=attend_from).eval(), _inputs()
    vocab = Vocabulary(["<pad>", "<start>", "<end>", "<unk>", *(f"w{i}" for i in range(V - 4))])
    settings = DecodingConfig(beam_size=beam_size, max_len=T)
    features = features.bfloat16()
    want = decode_captions(decoder, features.float(), vocab, settings)
    precisions = Precisions()
    with precisions, torch.autocast("cpu", dtype=torch.bfloat16):
        got = decode_captions(decoder, features, vocab, settings)
    assert set(precisions.flops) == {torch.float32} and not precisions.rounded
    for a, b in zip(got, want):
        assert a.tokens == b.tokens and a.score == b.score
        assert torch.equal(a.alphas, b.alphas)


@pytest.mark.parametrize("attend_from", ["previous", "current"])
def test_a_decoding_step_under_autocast_keeps_its_state_float32(attend_from):
    decoder, (features, tokens) = _decoder(attend_from=attend_from).eval(), _inputs()
    state = tuple(torch.randn(B, 3, H) for _ in range(2))  # three beams per image
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        projected, weights = decoder.prepare(features), decoder.step_weights()
        log_probs, (h, c), alpha = decoder.step(tokens[:, :3], state, features, projected, None, weights)
    assert all(t.dtype == torch.float32 for t in (projected, log_probs, h, c, alpha))
    assert weights.out_vocab.low.dtype == torch.bfloat16 and weights.out_vocab.full.dtype == torch.float32
    with torch.no_grad():
        full = decoder.step(tokens[:, :3], state, features, decoder.prepare(features))
    # bfloat16 products, float32 sums: close to the float32 step, not equal to it.
    for mixed, exact in zip((log_probs, h, c, alpha), (full[0], *full[1], full[2])):
        torch.testing.assert_close(mixed, exact, atol=0.05, rtol=0.02)
    assert not torch.equal(log_probs, full[0])


def test_float16_autocast_over_encoder_and_decoder_trains():
    # What 16-mixed does on a GPU (CPU autocast can cast to float16 too): the encoder's
    # convolutions and the decoder's products in float16, the loss and the gradients float32.
    torch.manual_seed(0)
    module = CaptioningModule(
        ["<pad>", "<start>", "<end>", "<unk>", "a", "red", "circle"],
        image_size=32,
        encoder=EncoderConfig(backbone="resnet18", stages=2, grid_size=2, fine_tune="all"),
        decoder=DecoderConfig(embed_dim=8, hidden_dim=8, attention_dim=8, dropout=0.0),
    )
    batch = {"images": torch.randn(2, 3, 32, 32), "tokens": torch.tensor([[1, 4, 5, 6, 2], [1, 6, 2, 0, 0]])}
    precisions = Precisions()
    with precisions, torch.autocast("cpu", dtype=torch.float16), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log without a trainer
        annotations = module.model.encode(batch["images"])
        loss = module.training_step(batch, 0)
    assert annotations.features.dtype == torch.float16  # the encoder under autocast
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert precisions.flops[torch.float16] > 0 and not set(precisions.flops) - {torch.float16, torch.float32}
    loss.backward()
    grads = [p.grad for p in module.parameters() if p.requires_grad]
    assert all(g is not None and g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)


def _spy_on_the_time_loop(monkeypatch) -> collections.Counter:
    """Counts the training calls of `_TimeLoop` by (features dtype, matrices' 16-bit dtype)."""
    calls: collections.Counter = collections.Counter()
    apply = fused._TimeLoop.apply

    def spy(decoder, input_gates, h, c, features, *rest):
        if decoder.training:
            calls[(features.dtype, rest[-1].dtype if rest[-1] is not None else None)] += 1
        return apply(decoder, input_gates, h, c, features, *rest)

    monkeypatch.setattr(fused._TimeLoop, "apply", spy)
    return calls


def _spy_on_clipping(monkeypatch) -> list[bool]:
    clipped, clip = [], system.clip_fused

    def spy(*args):
        clipped.append(clip(*args))
        return clipped[-1]

    monkeypatch.setattr(system, "clip_fused", spy)
    return clipped


def test_bf16_mixed_fit_runs_the_time_loop_and_clips_gradients(synth_data, tmp_path, monkeypatch):
    # As configs/shapes.yaml trains: gradient clipping, with the fused Adam that Lightning
    # refuses to clip under mixed precision (`runtime.clip_fused`).
    calls, clipped = _spy_on_the_time_loop(monkeypatch), _spy_on_clipping(monkeypatch)
    args = ["--data.data_dir", str(synth_data), *TINY_MODEL, *PAPER_ORDER, "--trainer.precision", "bf16-mixed"]
    cli = cli_main(
        [
            "fit",
            *args,
            "--trainer.gradient_clip_val",
            "1.0",
            "--trainer.fast_dev_run",
            "2",
            "--trainer.default_root_dir",
            str(tmp_path),
        ]
    )
    assert cli.trainer.state.finished and torch.isfinite(cli.trainer.callback_metrics["train/loss"])
    # The encoder under autocast hands the decoder bfloat16 features.
    assert calls == {(torch.bfloat16, torch.bfloat16): 2}
    assert clipped == [True, True]


def test_bf16_mixed_fit_from_cached_features(synth_data, tmp_path, monkeypatch):
    # Cached features arrive as float32 (from float16 shards); the decoder casts them for W_a a.
    common = ["--data.data_dir", str(synth_data), *TINY_MODEL, *PAPER_ORDER]
    assert main(["features", "extract", *common, "--out", str(tmp_path / "features")]) == 0
    calls = _spy_on_the_time_loop(monkeypatch)
    cli = cli_main(
        [
            "fit",
            *common,
            "--data.features_dir",
            str(tmp_path / "features"),
            "--trainer.precision",
            "bf16-mixed",
            "--trainer.fast_dev_run",
            "true",
            "--trainer.default_root_dir",
            str(tmp_path),
        ]
    )
    assert torch.isfinite(cli.trainer.callback_metrics["train/loss"])
    assert calls == {(torch.float32, torch.bfloat16): 1}


def _scaled_gradients(scaler: torch.amp.GradScaler | None) -> tuple[torch.nn.Module, torch.optim.Optimizer, list]:
    torch.manual_seed(0)
    layer = torch.nn.Linear(6, 5)
    optimizer = torch.optim.Adam(layer.parameters(), fused=True)
    loss = 100 * layer(torch.randn(8, 6)).pow(2).mean()
    (loss if scaler is None else scaler.scale(loss)).backward()
    exact = [g.clone() / (1 if scaler is None else scaler.get_scale()) for g in (p.grad for p in layer.parameters())]
    return layer, optimizer, exact


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_fused_adam_gradients_are_clipped_unscaled_under_mixed_precision(precision):
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0) if precision == "16-mixed" else None
    layer, optimizer, exact = _scaled_gradients(scaler)
    trainer = SimpleNamespace(precision_plugin=MixedPrecision(precision, "cpu", scaler))
    assert runtime.clip_fused(trainer, optimizer, 1.0, "norm")
    grads = [p.grad for p in layer.parameters()]
    norm = torch.linalg.vector_norm(torch.cat([g.flatten() for g in exact]))
    assert norm > 1  # so clipping scales the unscaled gradients down to norm 1
    for clipped, unclipped in zip(grads, exact):
        torch.testing.assert_close(clipped, unclipped / norm)
    before = [p.detach().clone() for p in layer.parameters()]
    if scaler is None:
        optimizer.step()
    else:
        scaler.step(optimizer)  # knows the gradients are unscaled already
        scaler.update()
    assert all(not torch.equal(a, b) for a, b in zip(before, layer.parameters()))
    # Nothing to do here without clipping or mixed precision: Lightning clips as usual.
    assert not runtime.clip_fused(trainer, optimizer, 0.0, "norm")
    assert not runtime.clip_fused(SimpleNamespace(precision_plugin=object()), optimizer, 1.0, "norm")


def test_bf16_mixed_where_bfloat16_is_emulated_warns(monkeypatch):
    monkeypatch.setattr(runtime, "bf16_supported", lambda device: False)
    trainer = SimpleNamespace(precision="bf16-mixed", strategy=SimpleNamespace(root_device=torch.device("cpu")))
    with pytest.warns(UserWarning, match="bf16-mixed on cpu, which has no bfloat16 arithmetic"):
        runtime.Runtime().setup(trainer, None, "fit")
    monkeypatch.setattr(runtime, "bf16_supported", lambda device: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        runtime.Runtime().setup(trainer, None, "fit")
