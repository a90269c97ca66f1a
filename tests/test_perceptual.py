"""Perceptual initialization: loss and 2AFC by hand, triplet loaders, training on the fixture."""

import json

import pytest
import torch
import yaml
from click.testing import CliRunner
from safetensors import safe_open

from adapt import AdaptError
from adapt.checkpoint import read_checkpoint
from adapt.cli import cli
from adapt.data.triplets import load_triplets, make_fixture
from adapt.perceptual import hinge_loss, perceptual_init, two_afc


def test_hinge_loss_and_two_afc_by_hand():
    d_a = torch.tensor([0.10, 0.30, 0.20, 0.50])
    d_b = torch.tensor([0.30, 0.10, 0.22, 0.50])
    p_a = torch.tensor([1.0, 1.0, 0.0, 0.5])
    # y = [+1, +1, -1, 0]; margin - y (d_b - d_a) = [0.05-0.2, 0.05+0.2, 0.05+0.02, 0.05] -> relu -> [0, .25, .07, .05]
    assert hinge_loss(d_a, d_b, p_a).item() == pytest.approx((0.25 + 0.07 + 0.05) / 4)
    # model picks a, b, a, neither -> agreement p_a, 1 - p_a, p_a, 0.5
    assert two_afc(d_a, d_b, p_a).tolist() == [1.0, 0.0, 0.0, 0.5]
    assert two_afc(torch.tensor([0.1]), torch.tensor([0.2]), torch.tensor([5 / 6])).item() == pytest.approx(5 / 6)


@pytest.fixture(scope="module")
def fixture_root(tmp_path_factory):
    return make_fixture(tmp_path_factory.mktemp("nights"), count=60, size=48)


def test_nights_layout_and_vote_filter(fixture_root, tmp_path):
    splits = load_triplets(f"nights:{fixture_root}")
    assert {name: len(t) for name, t in splits.items()} == {"train": 36, "val": 12, "test": 12}
    assert all(t.p_a in (0.0, 1.0) and t.ref.is_file() for t in splits["train"])
    lines = (fixture_root / "data.csv").read_text().splitlines()
    few_votes = lines[1].split(",")
    few_votes[3] = "5"  # votes < 6: dropped
    copy = tmp_path / "nights"
    copy.mkdir()
    for folder in ("ref", "distort"):
        (copy / folder).symlink_to(fixture_root / folder)
    (copy / "data.csv").write_text("\n".join([lines[0], ",".join(few_votes), *lines[2:]]) + "\n")
    assert len(load_triplets(f"nights:{copy}")["train"]) == 35


def test_loader_errors_name_the_row(fixture_root, tmp_path):
    csv = tmp_path / "t.csv"
    ref = next((fixture_root / "ref").rglob("*.png"))
    csv.write_text(f"ref,a,b,choice\n{ref},{ref},{ref},a\n{ref},{ref},{ref},maybe\n")
    with pytest.raises(AdaptError, match="row 3: choice must be 'a' or 'b'"):
        load_triplets(f"triplets:{csv}")
    csv.write_text(f"ref,a,b,choice\n{ref},{ref},missing.png,b\n")
    with pytest.raises(AdaptError, match="row 2: image not found: .*missing.png"):
        load_triplets(f"triplets:{csv}")
    csv.write_text("ref,a,choice\n")
    with pytest.raises(AdaptError, match="lacks column"):
        load_triplets(f"triplets:{csv}")
    with pytest.raises(AdaptError, match="unknown triplet data"):
        load_triplets("bapps:/x")
    with pytest.raises(AdaptError, match="triplet file not found"):
        load_triplets(f"nights:{tmp_path / 'none'}")


def test_training_on_the_fixture_raises_agreement_and_feeds_tune(fixture_root, tmp_path):
    out = tmp_path / "init.safetensors"
    result = perceptual_init(f"nights:{fixture_root}", out, "tf_efficientnet_lite0", epochs=4, image_size=48, seed=0)
    assert set(result.before) == {"val", "test"}
    assert result.after["val"] + result.after["test"] > result.before["val"] + result.before["test"], result
    with safe_open(str(out), "pt") as handle:
        record = json.loads(handle.metadata()["perceptual_init"])
        assert record["twoafc_after"] == result.after and "classifier.weight" not in handle.keys()
    runner = CliRunner()
    tuned = runner.invoke(cli, ["tune", "--weights", str(out), "--image-size", "32", "--epochs", "1", "--limit", "32",
                                "--out", str(tmp_path / "run")])  # fmt: skip
    assert tuned.exit_code == 0, tuned.output
    _, meta = read_checkpoint(tmp_path / "run" / "adapter.safetensors")
    assert meta.backbone_weights == str(out)  # the adapter is tied to the perceptual init's weights


def test_cli_prints_the_agreement_table(fixture_root, tmp_path):
    result = CliRunner().invoke(cli, ["perceptual-init", "--data", f"nights:{fixture_root}", "--method", "bitfit",
                                      "--epochs", "1", "--image-size", "32", "--out", str(tmp_path / "i.safetensors")])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "2AFC agreement" in result.output and "val" in result.output and "test" in result.output
    with safe_open(tmp_path / "i.safetensors", "pt") as file:  # the resolved options travel with the weights
        options = yaml.safe_load(file.metadata()["config"])
    assert options["method"] == "bitfit" and options["epochs"] == 1 and options["image_size"] == 32
    bad = CliRunner().invoke(cli, ["perceptual-init", "--data", "nights:/nowhere", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 1 and "triplet file not found" in bad.output
