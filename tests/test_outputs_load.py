"""Every output adapt writes is taken by the commands that read checkpoints, and `predict` works as a tool."""

import csv
import json

import pytest
from click.testing import CliRunner

from adapt.cli import cli

QUICK = ["--image-size", "32", "--epochs", "1", "--batch-size", "16"]


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def trained(folder_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    result = run("tune", "--data", f"folder:{folder_root}", "--method", "bitfit", *QUICK, "--out", out)
    assert result.exit_code == 0, result.output
    return out / "adapter.safetensors"


def test_a_hub_folder_and_a_run_folder_work_wherever_a_checkpoint_does(trained, folder_root, tmp_path):
    hub = tmp_path / "merged"
    assert run("merge", trained, "--out", f"{hub}/").exit_code == 0
    assert {p.name for p in hub.iterdir()} >= {"config.json", "model.safetensors"}
    for checkpoint in (hub, trained.parent):
        result = run("eval", checkpoint, "--split", "val")
        assert result.exit_code == 0 and "18 images" in result.stdout, result.output
        result = run("predict", checkpoint, folder_root / "test" / "one")
        assert result.exit_code == 0 and result.stdout.count("\n") == 8, result.output  # 8 test images of "one"
        assert run("info", checkpoint).exit_code == 0
    adapter = json.loads((trained.parent / "adapter.eval.json").read_text())
    merged = json.loads((hub / "model.eval.json").read_text())
    assert [e["accuracy"] for e in merged.values()] == pytest.approx([e["accuracy"] for e in adapter.values()], abs=1e-9)
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run("eval", empty)
    assert result.exit_code == 1 and "without model.safetensors" in result.stderr and "Traceback" not in result.output


def test_predict_takes_folders_and_globs_skips_a_bad_image_and_writes_csv_or_json(trained, folder_root, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for image in sorted((folder_root / "test" / "two").iterdir())[:3]:
        (photos / image.name).write_bytes(image.read_bytes())
    (photos / "broken.png").write_bytes(b"not an image")
    before = {p.name: p.read_bytes() for p in photos.iterdir()}
    result = run("predict", trained, photos, f"{folder_root}/test/zero/*.jpg", "--top-k", "2", "--batch-size", "2",
                 "--out", tmp_path / "p.csv")  # fmt: skip
    assert result.exit_code == 1
    assert [line for line in result.stderr.splitlines() if line.strip()] == [
        f"skipped: unreadable image {photos / 'broken.png'}: cannot identify image file {str(photos / 'broken.png')!r}",
        "error: 1 of 12 images could not be read (listed above)",
    ]
    rows = list(csv.reader((tmp_path / "p.csv").open()))
    assert rows[0] == ["path", "class_1", "probability_1", "class_2", "probability_2"] and len(rows) == 12
    assert all(float(r[2]) >= float(r[4]) for r in rows[1:])
    assert {p.name: p.read_bytes() for p in photos.iterdir()} == before
    result = run("predict", trained, photos / "*.jpg", "--out", tmp_path / "p.json")
    assert result.exit_code == 0
    predictions = json.loads((tmp_path / "p.json").read_text())
    assert len(predictions) == 3 and len(predictions[0]["top"]) == 3  # top-5 of 3 classes
    assert sum(t["probability"] for t in predictions[0]["top"]) == pytest.approx(1, abs=1e-5)
    # one forward pass per batch gives what one image at a time gives
    single = run("predict", trained, *sorted(photos.glob("*.jpg")), "--batch-size", "1", "--out", tmp_path / "one.json")
    assert single.exit_code == 0
    for a, b in zip(predictions, json.loads((tmp_path / "one.json").read_text())):
        assert [t["class"] for t in a["top"]] == [t["class"] for t in b["top"]]
        assert [t["probability"] for t in a["top"]] == pytest.approx([t["probability"] for t in b["top"]], abs=1e-5)


@pytest.mark.parametrize(
    "args, message",
    [
        (["nothing-here/*.png"], "no images in nothing-here/*.png"),
        (["{photo}", "--out", "{photo}"], "is named as an image"),  # an input is an image: refused as such
        (["{photo}", "--out", "{existing}"], "exists; pass --overwrite"),
    ],
)
def test_predict_bad_input_is_one_line_and_changes_nothing(trained, folder_root, tmp_path, args, message):
    photo = next((folder_root / "test" / "two").iterdir())
    existing = tmp_path / "existing.csv"
    existing.write_text("keep")
    before = photo.read_bytes()
    result = run("predict", trained, *[a.format(photo=photo, existing=existing) for a in args])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code != 0 and len(lines) == 1 and message in lines[0], result.stderr
    assert photo.read_bytes() == before and existing.read_text() == "keep"


def test_info_reads_every_kind_of_output_and_prints_json(trained, tmp_path):
    run_folder = trained.parent
    copies = []
    for i in range(3):
        copies.append(tmp_path / f"ingredient{i}.safetensors")
        copies[-1].write_bytes(trained.read_bytes())
    assert run("soup", *copies, "--out", tmp_path / "soup.safetensors").exit_code == 0
    result = run("soup", run_folder, copies[0], "--out", tmp_path / "from-folder.safetensors")  # a run folder is its adapter
    assert result.exit_code == 0, result.output
    assert run("merge", trained, "--out", tmp_path / "merged.safetensors").exit_code == 0
    assert run("eval", trained, "--split", "val").exit_code == 0
    kinds = {
        trained: "adapter checkpoint",
        run_folder: "run folder: adapter checkpoint",
        run_folder / "train_state.safetensors": "training state after epoch 1",
        run_folder / "summary.json": "a finished run's summary",
        run_folder / "config.yaml": "the resolved options of a run",
        run_folder / "metrics.jsonl": "a run's per-epoch metrics",
        run_folder / "adapter.eval.json": "evaluation results",
        tmp_path / "soup.safetensors": "soup of adapters",
        tmp_path / "merged.safetensors": "merged model: a plain timm state dict",
    }
    for path, kind in kinds.items():
        result = run("info", path)
        assert result.exit_code == 0 and result.stdout.splitlines()[0].startswith(f"{path}: {kind}"), (path, result.output)
        record = json.loads(run("info", path, "--json").stdout)
        assert record["path"] == str(path) and kind in record["kind"]
    again = run("merge", tmp_path / "merged.safetensors", "--out", tmp_path / "again.safetensors")
    assert again.exit_code == 0 and "is already a plain tf_efficientnet_lite0 (nothing to fold)" in again.stdout
    soup = json.loads(run("info", tmp_path / "soup.safetensors", "--json").stdout)["training"]["soup"]
    assert [i["path"] for i in soup["ingredients"]] == [str(p) for p in copies] and soup["recipe"] == "uniform"
    text = run("info", tmp_path / "soup.safetensors").stdout
    assert all(str(p) in text for p in copies)  # every ingredient, not only the first
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "other.json").write_text("[1, 2]")
    for path, message in ((tmp_path / "notes.txt", "not a file adapt writes"), (tmp_path / "other.json", "JSON that adapt did not write"),
                          (tmp_path / "missing.safetensors", "not found")):  # fmt: skip
        result = run("info", path)
        assert result.exit_code == 1 and message in result.stderr and len(result.stderr.splitlines()) == 1


def test_a_merged_hub_folder_carries_a_model_card(trained, tmp_path):
    out = tmp_path / "card"
    assert run("merge", trained, "--out", f"{out}/").exit_code == 0
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: timm\n") and "# tf_efficientnet_lite0 adapted with bitfit" in card
    trained_values = json.loads(run("info", trained, "--json").stdout)["values"]
    assert f"| trained values | {trained_values:,} |" in card and "| classes | 3: one, two, zero |" in card
    assert f"`adapt merge {trained} --out {out}/`" in card and "val (epoch 1 of 1)" in card
