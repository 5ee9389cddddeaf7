"""Image scans on random-init ViT, DINOv2 (with and without registers), CLIP and SigLIP vision towers: the scan
equals eager attention's `output_attentions` (and `output_hidden_states` norms), observing leaves the outputs,
checkpoints load from saved directories, reports draw sink maps, bad input is refused."""

import hashlib
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

import sinklab
from sinklab.data.images import EMBEDDED_IMAGES, pixel_values, read_images
from sinklab.errors import SinklabInputError
from sinklab.hf import ModelView
from sinklab.measure import Observer
from sinklab.measure.vision import high_norm_patches, scan_images
from sinklab.models import load
from sinklab.models.tiny import VISION_ARCHS, tiny_arch, tiny_vision
from sinklab.testing import assert_close, assert_refused


def sharp(arch: str):
    """A tiny random encoder with its weight matrices tripled: attention far from uniform (entropy about 1 nat)."""
    model, _ = tiny_vision(arch)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.mul_(3.0)
    return model


def eager(model, pixels, **kwargs):
    """The usual way: eager attention with output_attentions=True -> mean received mass [L, N, H, T] (mean over
    queries), row entropy [L, N, H] (mean over rows), token norms [L + 1, N, T] (each block, then the output)."""
    model.set_attn_implementation("eager")
    with torch.no_grad():
        out = model.base_model(pixel_values=pixels, output_attentions=True, output_hidden_states=True, **kwargs)
    model.set_attn_implementation("sdpa")
    A = torch.stack(out.attentions).double()  # [L, N, H, T, T]
    norms = torch.stack([*out.hidden_states[1:], out.last_hidden_state]).double().norm(dim=-1)
    return A.mean(3), -torch.special.xlogy(A, A).sum(-1).mean(-1), norms


@pytest.mark.parametrize("arch", VISION_ARCHS)
def test_scan_equals_eager(arch):
    model = sharp(arch)
    layout = ModelView(model).vision
    pixels, _ = pixel_values(read_images(None), None, layout)  # the embedded images, plain preprocessing
    received, entropy, norms = eager(model, pixels)
    result = sinklab.scan(model, None, batch_size=2, high_norm=12.0, norm_ratio=1.1, progress=False)
    v = result.vision
    P = len(layout.prefix)
    f32 = torch.float32
    assert v.labels[:P] == list(layout.prefix) and len(v.labels) == received.shape[-1]
    assert_close(result.first_token_mass, received[..., 0].mean(1), f32, "alpha_1 / [CLS] mass")
    assert_close(result.entropy, entropy.mean(1), f32, "entropy")
    if P:
        assert_close(v.prefix_mass, received[..., :P].mean(1), f32, "prefix mass")
    assert_close(v.patch_peak, received[..., P:].amax(-1).mean(1), f32, "top patch mass")
    maps = received[..., P:].mean(2).transpose(0, 1).unflatten(-1, v.grid)  # [N, L, rows, cols]
    assert_close(v.maps.double(), maps, f32, "sink maps")
    assert_close(v.token_norm.double(), norms.transpose(0, 1), f32, "token norms")
    patch = norms[..., P:]
    above, ratio, median = high_norm_patches(patch, 12.0, 1.1)
    assert v.above_threshold.tolist() == above.sum((1, 2)).tolist()
    assert v.above_ratio.tolist() == ratio.sum((1, 2)).tolist()
    assert_close(v.patch_norm_median, median.mean(1), f32, "median patch norm")
    assert sum(v.above_ratio.tolist()) > 0 < sum(v.above_threshold.tolist())  # both rules are exercised
    assert len(v.high_norm_tokens) == int((above[-1] | ratio[-1]).sum())
    assert [i["name"] for i in v.images] == list(EMBEDDED_IMAGES)


@pytest.mark.parametrize("arch", ["vit", "dinov2"])
def test_other_input_sizes_interpolate_positions(arch):
    """96 x 80 inputs to 64 x 64 models: a 12 x 10 grid, position embeddings interpolated as transformers does."""
    model = sharp(arch)
    pixels = torch.randn(2, 3, 96, 80)
    kwargs = {"interpolate_pos_encoding": True} if arch == "vit" else {}
    received, _, norms = eager(model, pixels, **kwargs)
    v = sinklab.scan(model, None, images=pixels, progress=False).vision
    assert v.grid == (12, 10)
    assert_close(v.maps.double(), received[..., 1:].mean(2).transpose(0, 1).unflatten(-1, v.grid), torch.float32)
    assert_close(v.token_norm.double(), norms.transpose(0, 1), torch.float32)


@pytest.mark.parametrize("arch", VISION_ARCHS)
def test_observing_leaves_outputs(arch):
    model = sharp(arch)
    pixels = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        plain = model(pixel_values=pixels).last_hidden_state
        with Observer(model, hooks={"layers.1.resid_post": [lambda hidden, call: None]}):
            observed = model(pixel_values=pixels).last_hidden_state
        sinklab.scan(model, None, images=pixels, progress=False)
        after = model(pixel_values=pixels).last_hidden_state
    assert_close(observed, plain, torch.float32, f"{arch} observed")
    assert torch.equal(after, plain) and model.config._attn_implementation == "sdpa"


def test_planted_high_norm_patch_is_found():
    """One patch of huge pixels gives one token of huge norm in every block of a ViT (no norm before the blocks): the
    only high-norm token by both rules there; its final norm removes it unless the norm is taken out."""
    model, _ = tiny_vision("vit")
    pixels = torch.randn(1, 3, 64, 64) * 0.1
    pixels[:, :, 2 * 8 : 3 * 8, 5 * 8 : 6 * 8] = 300.0  # patch (2, 5)
    v = sinklab.scan(model, None, images=pixels, progress=False).vision
    assert v.above_threshold.tolist() == v.above_ratio.tolist() == [1, 1, 0] and v.high_norm_tokens == []
    assert int(v.token_norm[0, 0, 1:].argmax()) == 2 * 8 + 5
    model.layernorm = torch.nn.Identity()  # the output is the last block's
    v = sinklab.scan(model, None, images=pixels, progress=False).vision
    (token,) = v.high_norm_tokens
    assert (token["image"], token["row"], token["col"]) == (0, 2, 5) and token["above_threshold"]
    assert token["above_ratio"] and token["norm"] > 150.0 and token["ratio_to_median"] > 3.0


def test_registers_report_and_files(tmp_path):
    model = sharp("dinov2_registers")
    result = sinklab.scan(model, None, progress=False, model_name="tiny-dinov2-reg")
    d = result.to_dict()
    json.dumps(d, allow_nan=False)
    v = d["vision"]
    assert v["prefix_tokens"] == ["[CLS]", "[REG0]", "[REG1]", "[REG2]", "[REG3]"] and v["patch_grid"] == [8, 8]
    assert len(v["prefix_mass"]["[REG2]"]) == 2 and len(v["prefix_mass"]["[REG2]"][0]) == 4  # [L][H]
    assert v["high_norm"]["threshold"] == 150.0 and v["token_norms"]["layers"] == ["0", "1", "output"]
    assert d["sinks"] and all(s["token"].startswith(("[", "patch ")) for s in d["sinks"])
    images = d["provenance"]["images"]
    assert images["count"] == 3 and images["preprocessing"].startswith("resize to 64x64")
    for source in images["source"]:
        data = Path(source["path"]).read_bytes()
        assert source["sha256"] == hashlib.sha256(data).hexdigest()[:16] and source["bytes"] == len(data)
    result.save(tmp_path)
    files = {p.name for p in tmp_path.iterdir()}
    assert {"sink_map_0.png", "sink_map_2.png", "vision_summary.png", "report.html", "heads.csv"} <= files
    header = (tmp_path / "heads.csv").read_text().splitlines()[0].split(",")
    assert header[-6:] == ["cls_mass", "reg0_mass", "reg1_mass", "reg2_mass", "reg3_mass", "top_patch_mass"]
    page = (tmp_path / "report.html").read_text()
    assert "High-norm patch tokens" in page and "x = x (pixels), y = y (pixels)" in page
    assert "colour = mean attention received" in page and images["pixel_values_sha256"] in page


def test_loads_from_saved_directories(tmp_path):
    """A directory saved from a random config loads as (model, None) and scans as the model it came from; with an
    image processor saved beside it, the processor comes along and preprocesses; a CLIP checkpoint loads as its
    vision tower."""
    from transformers import CLIPConfig, CLIPModel, ViTImageProcessor

    model = sharp("dinov2_registers")
    model.save_pretrained(tmp_path / "dino")
    loaded, processor = load(str(tmp_path / "dino"))
    assert processor is None and type(loaded) is type(model)
    a, b = (sinklab.scan(m, None, progress=False).vision.maps for m in (model, loaded))
    assert torch.equal(a, b)
    ViTImageProcessor(size={"height": 64, "width": 64}).save_pretrained(tmp_path / "dino")
    loaded, processor = load(str(tmp_path / "dino"))
    result = sinklab.scan(loaded, processor, progress=False)
    assert result.provenance["images"]["preprocessing"].startswith("image processor ViTImageProcessor")
    assert result.provenance["model"]["directory_sha256"]
    shape = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)
    clip = CLIPModel(
        CLIPConfig(text_config={**shape, "vocab_size": 99}, vision_config={**shape, "image_size": 64, "patch_size": 8})
    )
    clip.save_pretrained(tmp_path / "clip")
    tower, _ = load(str(tmp_path / "clip"))
    assert type(tower).__name__ == "CLIPVisionModel"
    pixels = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        want = clip.vision_model(pixel_values=pixels).last_hidden_state
        assert torch.equal(tower(pixel_values=pixels).last_hidden_state, want)


def test_api_bad_input():
    model, _ = tiny_vision("vit")
    text_model, tok = tiny_arch("llama")
    with pytest.raises(SinklabInputError, match="not an image encoder"):
        scan_images(text_model, tok, progress=False)
    with pytest.raises(SinklabInputError, match=r"pixel values must be \[N, 3, H, W\]"):
        sinklab.scan(model, None, images=torch.zeros(3, 64, 64), progress=False)
    with pytest.raises(SinklabInputError, match="image processor or None"):
        sinklab.scan(model, tok, progress=False)
    with pytest.raises(SinklabInputError, match="not texts"):
        sinklab.scan(model, None, ["a text"], progress=False)
    with pytest.raises(SinklabInputError, match="norm_ratio > 1"):
        sinklab.scan(model, None, norm_ratio=0.5, progress=False)


def test_cli_bad_input(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    out = tmp_path / "out"
    vit = ["scan", "--model", "tiny-vit", "--out", str(out)]
    assert_refused(["scan", "--images", str(empty), "--out", str(out)], "needs an image encoder", tmp_path)
    assert_refused([*vit, "--images", str(empty)], "holds no image files (accepted: .png", tmp_path)
    assert_refused([*vit, "--images", str(tmp_path / "notes.txt")], "is not an image file; accepted: .png", tmp_path)
    assert_refused([*vit, "--images", str(tmp_path / "broken.png")], "is not a readable image", tmp_path)
    assert_refused([*vit, "--images", str(tmp_path / "nowhere")], "does not exist", tmp_path)
    assert_refused([*vit, "--text", str(tmp_path / "notes.txt")], "--text is for text models", tmp_path)
    assert_refused([*vit, "--norm-ratio", "1"], "--norm-ratio > 1", tmp_path)


def test_cli_scans_a_directory(tmp_path):
    from typer.testing import CliRunner

    from sinklab.cli import app

    images = tmp_path / "images"
    images.mkdir()
    for i, colour in enumerate(["red", "navy"]):
        Image.new("RGB", (40 + 10 * i, 30), colour).save(images / f"{i}.png")
    (images / "README").write_text("skipped: not an image")
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app, ["scan", "--model", "tiny-siglip-vision", "--images", str(images), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "images x tokens" in result.output and "high-norm patches (output)" in result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_sequences"] == 2 and metrics["vision"]["prefix_tokens"] == []  # SigLIP: no [CLS]
    sources = metrics["provenance"]["images"]["source"]
    assert [s["name"] for s in sources] == ["0.png", "1.png"] and sources[1]["width"] == 50
    assert metrics["provenance"]["command"].startswith("sinklab scan --model tiny-siglip-vision --images")
    assert (out / "sink_map_1.png").exists()
