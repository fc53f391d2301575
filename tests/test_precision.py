"""bf16 autocast on CPU (issue 17): the decoder's recurrent cell and output layer stay float32, so bf16-mixed decodes
the captions that float32 decodes; the padded output projection; the --precision options."""

from __future__ import annotations

import itertools

import pytest
import torch

from vidcap.errors import UsageError
from vidcap.model.captioner import CaptionModel, ModelConfig
from vidcap.model.decoding import DecodingOptions, decode
from vidcap.model.layers import padded_linear
from vidcap.precision import PRECISIONS, autocast, check_precision, compute_record, use_tf32

pytestmark = pytest.mark.usefixtures("one_thread")


def _model(variant: str, encoder: str, seed: int) -> CaptionModel:
    torch.manual_seed(seed)
    config = ModelConfig(vocab_size=30, global_dim=12, local_dim=6, variant=variant, encoder=encoder, embed_dim=16,
                         hidden_dim=32, attention_dim=16, max_frames=8)
    model = CaptionModel(config).eval()
    with torch.no_grad():
        model.out.weight.mul_(4)  # logits as peaked as a trained model's, so that the captions are not ties
    return model


def _inputs(model: CaptionModel, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    feats = torch.randn(6, 8, model.config.feature_dim, generator=generator)
    mask = torch.ones(6, 8, dtype=torch.bool)
    mask[2, 5:] = False
    return feats, mask


def test_recurrent_cell_and_output_layer_are_float32_under_bf16_autocast():
    model = _model("local_global", "position", 0)
    feats, mask = _inputs(model, 0)
    tokens = torch.randint(4, 30, (6, 5))
    with torch.no_grad(), autocast("cpu", "bf16-mixed"):
        state = model.init_state(feats, mask)
        assert state["h"].dtype == torch.bfloat16  # the per-video work (h_0 = tanh(W_h mean(v))) does run in bf16
        log_probs, alpha, state = model.step(tokens[:, 0], state)
        logits, alphas = model(feats, mask, tokens)
    assert state["h"].dtype == state["c"].dtype == state["ctx"].dtype == torch.float32
    assert log_probs.dtype == logits.dtype == alpha.dtype == alphas.dtype == torch.float32


def test_bf16_autocast_decodes_the_float32_captions():
    """With the decoder's step in bf16, 16 of these 72 configurations (17 of 432 videos) decoded other captions
    (issue 17); with only the recurrent cell and the output layer in float32, 3 did; now none does."""
    options = DecodingOptions(beam_size=3, max_len=12)
    for seed, variant, encoder in itertools.product(range(12), ("basic", "global", "local_global"),
                                                    ("none", "position")):
        model = _model(variant, encoder, seed)
        feats, mask = _inputs(model, seed)
        fp32 = decode(model, feats, mask, options)
        with autocast("cpu", "bf16-mixed"):
            bf16 = decode(model, feats, mask, options)
        assert [h[0].tokens for h in bf16] == [h[0].tokens for h in fp32], (seed, variant, encoder)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("out_features, bias", [(13, True), (16, True), (21, False)])
def test_padded_linear_gives_the_layer_values_and_gradients(out_features, bias, dtype):
    """The output projection's padding on CUDA (vidcap.model.captioner.VOCAB_MULTIPLE; vidcap.model.layers.padded_linear), checked here on the CPU."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(7, out_features, bias=bias).to(dtype)
    x = torch.randn(3, 4, 7, dtype=dtype, requires_grad=True)
    expected = layer(x)
    expected.square().sum().backward()
    grads = [p.grad.clone() for p in (x, *layer.parameters())]
    for p in (x, *layer.parameters()):
        p.grad = None
    got = padded_linear(x, layer, 8)
    got.square().sum().backward()
    assert got.shape == expected.shape
    # Equal to float rounding: a GEMM of another width may sum in another order (float64: 1 ulp seen).
    tolerance = {"rtol": 1e-6, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 1e-14, "atol": 1e-14}
    torch.testing.assert_close(got, expected, **tolerance)
    for grad, p in zip(grads, (x, *layer.parameters()), strict=True):
        torch.testing.assert_close(p.grad, grad, **tolerance)


def test_precision_choices_and_records():
    assert PRECISIONS == ("32-true", "bf16-mixed") and check_precision("bf16-mixed") == "bf16-mixed"
    with pytest.raises(UsageError, match="--precision must be one of 32-true, bf16-mixed"):
        check_precision("16-mixed")
    x = torch.ones(2, 2)
    for precision, dtype in (("32-true", torch.float32), ("bf16-mixed", torch.bfloat16)):
        with autocast("cpu", precision):
            assert (x @ x).dtype == dtype
    record = compute_record("cpu", "32-true")
    assert (record["device"], record["precision"], record["tf32"]) == ("cpu", "32-true", False)
    assert compute_record("cpu", "bf16-mixed")["tf32"] is False  # TF32 is a CUDA setting
    before = torch.backends.cudnn.allow_tf32
    with use_tf32(not before):
        assert torch.backends.cudnn.allow_tf32 is (not before)
        assert torch.backends.cuda.matmul.allow_tf32 is (not before)
    assert torch.backends.cudnn.allow_tf32 is before


@pytest.mark.java
@pytest.mark.slow
def test_bf16_mixed_validation_metrics_equal_float32_evaluation(tmp_path):
    """The val/ numbers that pick a checkpoint under bf16-mixed are those `vidcap evaluate` reports in float32."""
    from pytorch_lightning import Callback

    from tests.helpers import write_feature_dataset
    from vidcap.evaluation import evaluate
    from vidcap.experiments.demo import DATA_CONFIG, DEMO_CONFIG
    from vidcap.training.lightning_cli import run_lightning

    class LastValidation(Callback):
        metrics: dict[str, float] = {}

        def on_validation_end(self, trainer, pl_module) -> None:
            self.metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}

    data, store = write_feature_dataset(tmp_path)
    args = ["--config", str(DATA_CONFIG), "--config", str(DEMO_CONFIG), "--model.architecture.embed_dim", "8", "--model.architecture.hidden_dim",
            "16", "--model.architecture.attention_dim", "8", "--data.batch_size", "8", "--trainer.max_epochs", "3",
            "--trainer.check_val_every_n_epoch", "3", "--model.decoding.beam_size", "3", "--model.caption_metrics",
            "true", "--trainer.precision", "bf16-mixed", "--trainer.enable_progress_bar", "false",
            "--data.data_dir", str(data), "--data.features_dir", str(store), "--trainer.default_root_dir",
            str(tmp_path / "run")]
    validation = LastValidation()
    assert run_lightning("fit", args, callbacks=[validation]) == 0
    checkpoint = tmp_path / "run" / "checkpoints" / "last.ckpt"
    val = validation.metrics
    fp32 = evaluate(checkpoint, data, store, split="val", progress=False, precision="32-true")
    for logged, key in (("BLEU4", "Bleu_4"), ("METEOR", "METEOR"), ("ROUGE_L", "ROUGE_L"), ("CIDEr", "CIDEr")):
        assert val[f"val/{logged}"] == pytest.approx(fp32.metrics[key], abs=1e-6), key
    assert val["val/ppl"] == pytest.approx(fp32.metrics["perplexity"], rel=1e-2)
    bf16 = evaluate(checkpoint, data, store, split="val", progress=False, precision="bf16-mixed")
    assert bf16.predictions == fp32.predictions and bf16.options["precision"] == "bf16-mixed"
