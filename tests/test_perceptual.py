"""Perceptual initialization: loss and 2AFC by hand, triplet loaders, training on the fixture."""

import json

import pytest
import torch
import yaml
from click.testing import CliRunner
from safetensors import safe_open
from safetensors.torch import load_file

from adapt import AdaptError
from adapt.checkpoint import read_checkpoint
from adapt.cli import cli
from adapt.data.triplets import load_triplets, make_fixture
from adapt.perceptual import evaluated_splits, hinge_loss, perceptual_init, majority_accuracy, two_afc


def test_hinge_loss_and_two_afc_by_hand():
    d_a = torch.tensor([0.10, 0.30, 0.20, 0.50])
    d_b = torch.tensor([0.30, 0.10, 0.22, 0.50])
    p_a = torch.tensor([1.0, 1.0, 0.0, 0.5])
    # y = [+1, +1, -1, 0]; margin - y (d_b - d_a) = [0.05-0.2, 0.05+0.2, 0.05+0.02, 0.05] -> relu -> [0, .25, .07, .05]
    assert hinge_loss(d_a, d_b, p_a).item() == pytest.approx((0.25 + 0.07 + 0.05) / 4)
    # model picks a, b, a, neither -> agreement p_a, 1 - p_a, p_a, 0.5
    assert two_afc(d_a, d_b, p_a).tolist() == [1.0, 0.0, 0.0, 0.5]
    assert two_afc(torch.tensor([0.1]), torch.tensor([0.2]), torch.tensor([5 / 6])).item() == pytest.approx(5 / 6)
    # against the majority: picks a (majority a), b (majority a), a (majority b), tie
    assert majority_accuracy(d_a, d_b, p_a).tolist() == [1.0, 0.0, 0.0, 0.5]
    shares = torch.tensor([0.8, 0.3, 0.5])
    picks_a = (torch.zeros(3), torch.ones(3))  # d_a < d_b: the model picks a every time
    assert majority_accuracy(*picks_a, shares).tolist() == [1.0, 0.0, 0.5]
    assert two_afc(*picks_a, shares).tolist() == pytest.approx([0.8, 0.3, 0.5])


def dreamsim_score(d0: torch.Tensor, d1: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """ssundaram21/dreamsim evaluation/score.py, score_nights_dataset, written out: p is the share of voters who
    chose img_1 (the right image), d0/d1 the distances to img_0/img_1."""
    return (d0 < d1) * (1 - p) + (d1 < d0) * p + (d0 == d1) * 0.5


def test_the_two_afc_score_is_dreamsims_formula():
    g = torch.Generator().manual_seed(0)
    d_a, d_b = torch.rand(200, generator=g), torch.rand(200, generator=g)
    d_b[:20] = d_a[:20]  # ties
    right_share = torch.randint(0, 7, (200,), generator=g) / 6  # vote shares of 6 voters, not only unanimous
    ours = two_afc(d_a, d_b, 1 - right_share)  # ours takes the share who chose the left image
    assert torch.allclose(ours, dreamsim_score(d_a, d_b, right_share).float(), atol=1e-7)


def test_the_evaluated_splits_are_val_and_each_test_part():
    assert evaluated_splits(["train", "test_no_imagenet", "val", "test_imagenet"]) == ["val", "test_imagenet", "test_no_imagenet"]
    assert evaluated_splits(["train"]) == ["train"]


@pytest.fixture(scope="module")
def fixture_root(tmp_path_factory):
    return make_fixture(tmp_path_factory.mktemp("nights"), count=60, size=48)


def _with_csv(fixture_root, tmp_path, lines: list[str]):
    """A NIGHTS folder with the fixture's images and the given data.csv lines."""
    copy = tmp_path / "nights"
    copy.mkdir()
    for folder in ("ref", "distort"):
        (copy / folder).symlink_to(fixture_root / folder)
    (copy / "data.csv").write_text("\n".join(lines) + "\n")
    return copy


def test_nights_layout_and_vote_filter(fixture_root, tmp_path):
    splits = load_triplets(f"nights:{fixture_root}")
    sizes = {name: len(t) for name, t in splits.items()}
    assert (sizes["train"], sizes["val"], sizes["test_imagenet"] + sizes["test_no_imagenet"]) == (36, 12, 12)
    assert sizes["test_imagenet"] and sizes["test_no_imagenet"]  # photo crops and digits
    shares = [t.p_a for t in splits["train"]]
    assert all(0.0 <= p <= 1.0 and p != 0.5 for p in shares) and any(0.0 < p < 1.0 for p in shares)  # not all unanimous
    assert all(t.ref.is_file() for t in splits["train"])
    lines = (fixture_root / "data.csv").read_text().splitlines()
    few_votes = lines[1].split(",")
    few_votes[3] = "5"  # votes < 6: dropped
    copy = _with_csv(fixture_root, tmp_path, [lines[0], ",".join(few_votes), *lines[2:]])
    assert len(load_triplets(f"nights:{copy}")["train"]) == 35


def test_is_imagenet_must_be_a_boolean(fixture_root, tmp_path):
    lines = (fixture_root / "data.csv").read_text().splitlines()
    row = next(i for i, line in enumerate(lines) if ",test," in line)
    lines[row] = lines[row].rsplit(",", 1)[0] + ",maybe"
    copy = _with_csv(fixture_root, tmp_path, lines)
    with pytest.raises(AdaptError, match=f"row {row + 1}: is_imagenet must be True or False"):
        load_triplets(f"nights:{copy}")


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


def test_perceptual_fine_tuning_raises_agreement_and_feeds_tune(fixture_root, tmp_path):
    out = tmp_path / "init.safetensors"
    result = perceptual_init(f"nights:{fixture_root}", out, "tf_efficientnet_lite0", "embedded",
                             config={"epochs": 4, "batch_size": 16}, image_size=48)  # fmt: skip
    assert set(result.before) == {"val", "test_imagenet", "test_no_imagenet", "nights_total"}
    total = lambda scores: sum(s.score * s.triplets for s in scores.values())  # noqa: E731
    assert total(result.after) > total(result.before), result
    with safe_open(str(out), "pt") as handle:
        record = json.loads(handle.metadata()["perceptual_init"])
        assert record["twoafc_after"]["val"]["score"] == result.after["val"].score
        assert record["source_weights"] == "embedded" and "classifier.weight" not in handle.keys()
    runner = CliRunner()
    tuned = runner.invoke(cli, ["tune", "--weights", str(out), "--image-size", "32", "--epochs", "1", "--limit", "32",
                                "--out", str(tmp_path / "run")])  # fmt: skip
    assert tuned.exit_code == 0, tuned.output
    _, meta = read_checkpoint(tmp_path / "run" / "adapter.safetensors")
    assert meta.backbone_weights == str(out)  # the adapter is tied to the perceptual init's weights


def test_the_default_starts_from_a_random_initialisation(fixture_root, tmp_path):
    out = tmp_path / "init.safetensors"
    result = perceptual_init(f"nights:{fixture_root}", out, "tf_efficientnet_lite0", config={"epochs": 3, "seed": 1},
                             image_size=32)  # fmt: skip
    assert result.source == "random" and result.losses[-1] < result.losses[0]
    from adapt.backbones import create_backbone

    embedded, _ = create_backbone("tf_efficientnet_lite0", "embedded", num_classes=0)
    aligned = load_file(out)
    assert not torch.allclose(aligned["conv_stem.weight"], embedded.state_dict()["conv_stem.weight"])
    random_start, _ = create_backbone("tf_efficientnet_lite0", "random", num_classes=0, seed=1)
    moved = (aligned["conv_stem.weight"] - random_start.state_dict()["conv_stem.weight"]).abs().max()
    assert 0 < moved < 0.5  # trained from that random start (seeded), not replaced
    with safe_open(str(out), "pt") as handle:
        assert json.loads(handle.metadata()["perceptual_init"])["source_weights"] == "random"
    # BatchNorm statistics stayed the start's (norm_statistics="frozen", the default) ...
    start = random_start.state_dict()
    for key in ("bn1.running_mean", "bn1.running_var", "blocks.3.0.bn2.running_var"):
        assert torch.equal(aligned[key], start[key]), key


def test_batch_statistics_move_the_running_statistics(fixture_root, tmp_path):
    out = tmp_path / "init.safetensors"
    perceptual_init(f"nights:{fixture_root}", out, "tf_efficientnet_lite0",
                    config={"epochs": 1, "seed": 1, "norm_statistics": "batch"}, image_size=32)  # fmt: skip
    from adapt.backbones import create_backbone

    start = create_backbone("tf_efficientnet_lite0", "random", num_classes=0, seed=1)[0].state_dict()
    aligned = load_file(out)
    assert not torch.equal(aligned["bn1.running_mean"], start["bn1.running_mean"])
    assert aligned["bn1.num_batches_tracked"] > start["bn1.num_batches_tracked"]
    with pytest.raises(AdaptError, match="norm_statistics"):
        perceptual_init(f"nights:{fixture_root}", tmp_path / "x.safetensors", "tf_efficientnet_lite0",
                        config={"norm_statistics": "train"})  # fmt: skip
    assert not (tmp_path / "x.safetensors").exists()


def test_cli_prints_the_agreement_table(fixture_root, tmp_path):
    result = CliRunner().invoke(cli, ["perceptual-init", "--data", f"nights:{fixture_root}", "--method", "bitfit",
                                      "--epochs", "1", "--image-size", "32", "--out", str(tmp_path / "i.safetensors")])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "perceptual initialization (random start)" in result.output
    assert all(name in result.output for name in ("val", "test_imagenet", "test_no_imagenet", "2AFC (DreamSim)", "majority accuracy"))
    with safe_open(tmp_path / "i.safetensors", "pt") as file:  # the resolved options travel with the weights
        options = yaml.safe_load(file.metadata()["config"])
    assert options["method"] == "bitfit" and options["epochs"] == 1 and options["image_size"] == 32
    bad = CliRunner().invoke(cli, ["perceptual-init", "--data", "nights:/nowhere", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 1 and "triplet file not found" in bad.output


def test_nights_rows_as_dreamsims_loader_reads_them(tmp_path):
    """DreamSim's TwoAFCDataset (dataset/dataset.py) reads data.csv by position: column 2 (right_vote) is the
    target p, a float share in [0, 1] (0 or 1 on the unanimous rows it keeps, votes >= 6), columns 4-6 the
    ref/left/right paths, and filters on `votes`, `split` and `is_imagenet` (True/False)."""
    from PIL import Image

    header = "id,left_vote,right_vote,votes,ref_path,left_path,right_path,split,is_imagenet,prompt"
    rows = [(0, 1.0, 0.0, 6, "train", True), (1, 0.0, 1.0, 7, "train", False), (2, 1.0, 0.0, 5, "train", True),
            (3, 0.0, 1.0, 6, "val", True), (4, 1.0, 0.0, 6, "test", True), (5, 0.0, 1.0, 8, "test", False)]  # fmt: skip
    lines = [header]
    for i, left, right, votes, split, imagenet in rows:
        for part in ("ref", "distort"):
            (tmp_path / part / "000").mkdir(parents=True, exist_ok=True)
        paths = [f"ref/000/{i:03d}.png", f"distort/000/{i:03d}_0.png", f"distort/000/{i:03d}_1.png"]
        for n, path in enumerate(paths):
            Image.new("RGB", (16, 16), (40 * n, 10 * i, 0)).save(tmp_path / path)
        lines.append(f"{i},{left},{right},{votes},{','.join(paths)},{split},{imagenet},a photo")
    (tmp_path / "data.csv").write_text("\n".join(lines) + "\n")
    splits = load_triplets(f"nights:{tmp_path}")
    assert {name: len(items) for name, items in splits.items()} == {"train": 2, "val": 1, "test_imagenet": 1,
                                                                      "test_no_imagenet": 1}  # fmt: skip
    assert [t.p_a for t in splits["train"]] == [1.0, 0.0]  # p_a = 1 - right_vote: the left image's share
    assert splits["test_no_imagenet"][0].p_a == 0.0 and splits["test_imagenet"][0].p_a == 1.0


def test_the_default_recipe_is_dreamsims():
    """ssundaram21/dreamsim: Adam(betas=(0.5, 0.999)), lr 3e-4, weight decay 0, batch 32, 8 epochs, margin 0.05."""
    from adapt.perceptual import AlignmentConfig

    recipe = AlignmentConfig()
    assert (recipe.lr, recipe.weight_decay, recipe.batch_size, recipe.epochs, recipe.margin) == (3e-4, 0.0, 32, 8, 0.05)
    optimizer = recipe.make_optimizer(torch.nn.Linear(2, 2))
    assert type(optimizer) is torch.optim.Adam and optimizer.defaults["betas"] == (0.5, 0.999)
    assert type(AlignmentConfig(optimizer="adamw").make_optimizer(torch.nn.Linear(2, 2))) is torch.optim.AdamW
    with pytest.raises(AdaptError, match="betas"):
        AlignmentConfig(betas=(0.5, 1.5))


def test_alignment_writes_the_epoch_with_the_best_val_score_and_stops_on_patience(fixture_root, tmp_path):
    out = tmp_path / "init.safetensors"
    result = perceptual_init(f"nights:{fixture_root}", out, "tf_efficientnet_lite0", "embedded",
                             config={"epochs": 4, "batch_size": 8, "lr": 1e-3, "patience": 1}, image_size=32)  # fmt: skip
    scores = result.val_scores
    assert 1 <= len(scores) == len(result.losses) <= 4
    assert scores.index(max(scores)) + 1 == result.best_epoch
    assert all(b > a for a, b in zip(scores[:-2], scores[1:-1]))  # it ran on while val improved ...
    assert len(scores) == 4 or scores[-1] <= max(scores[:-1])  # ... and stopped at the first epoch that did not
    assert result.after["val"].score == pytest.approx(max(scores), abs=1e-6)  # the file holds the best epoch
    with safe_open(str(out), "pt") as handle:
        record = json.loads(handle.metadata()["perceptual_init"])
    assert record["best_epoch"] == result.best_epoch and record["recipe"]["optimizer"] == "adam"


def test_the_fixture_draws_on_every_source_and_distortion_family(tmp_path):
    from adapt.data.triplets import DISTORTIONS

    root = make_fixture(tmp_path / "f", count=90, size=32, seed=1)
    rows = (root / "data.csv").read_text().splitlines()[1:]
    assert len(rows) == 90 and len(DISTORTIONS) >= 11
    natural = [r.endswith("True") for r in rows]
    assert 0.4 < sum(natural) / len(natural) < 0.9  # photo crops, and digits, maps, an illustration, gratings
