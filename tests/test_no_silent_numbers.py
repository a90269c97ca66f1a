"""No silent wrong number: outputs matched to labels by class name, broken weights named, conflicting
options refused, runs that resume from anywhere (issue: "No silent wrong number")."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from adapt.cli import cli
from adapt.errors import AdaptError

QUICK = ["--image-size", "32", "--epochs", "1", "--batch-size", "16", "--limit", "60"]


def run(*args) -> object:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    return result


def ok(*args) -> str:
    result = run(*args)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def ssf_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ssf") / "run"
    ok("tune", *QUICK, "--out", out)
    return out


def permuted_copy(source: Path, target: Path, order: list[int]) -> None:
    """The checkpoint with its classes listed in another order, head rows moved along: the same model."""
    with safe_open(str(source), framework="pt") as handle:
        meta = dict(handle.metadata())
    tensors = load_file(str(source))
    names = json.loads(meta["class_names"])
    meta["class_names"] = json.dumps([names[i] for i in order])
    for key in ("classifier.weight", "classifier.bias"):
        tensors[key] = tensors[key][order].contiguous()
    save_file(tensors, str(target), metadata=meta)


def test_a_checkpoint_with_permuted_classes_scores_the_same(ssf_run, tmp_path):
    from adapt.evaluation import evaluate_checkpoint

    checkpoint = ssf_run / "adapter.safetensors"
    permuted = tmp_path / "permuted.safetensors"
    permuted_copy(checkpoint, permuted, [3, 7, 0, 9, 1, 5, 2, 8, 6, 4])
    plain = evaluate_checkpoint(checkpoint, limit=200)
    moved = evaluate_checkpoint(permuted, limit=200)
    assert plain.accuracy > 0.15  # trained: above chance (0.1), so a label mix-up would show
    assert moved.accuracy == pytest.approx(plain.accuracy, abs=1e-9)
    assert moved.images == plain.images == 200


def test_a_merged_model_with_permuted_classes_scores_the_same(ssf_run, tmp_path):
    from adapt.evaluation import evaluate_checkpoint

    permuted = tmp_path / "permuted.safetensors"
    permuted_copy(ssf_run / "adapter.safetensors", permuted, [9, 8, 7, 6, 5, 4, 3, 2, 1, 0])
    ok("merge", permuted, "--out", tmp_path / "merged.safetensors")
    plain = evaluate_checkpoint(ssf_run / "adapter.safetensors", limit=200)
    merged = evaluate_checkpoint(tmp_path / "merged.safetensors", limit=200)
    assert merged.accuracy == pytest.approx(plain.accuracy, abs=1e-9)


def test_classes_that_only_partly_match_the_data_are_refused():
    from adapt.data.subsets import align_classes

    data = list(range(4))
    with pytest.raises(AdaptError, match="1 of them not in the data"):
        align_classes(data, ["a", "b", "c", "d"], ["a", "b", "c", "x"])
    assert align_classes(data, ["a", "b"], ["0", "1"]) is data  # no shared names: by position, as VTAB's numbers


def test_a_continual_task_checkpoint_evaluates_as_the_run_measured(tmp_path):
    from adapt.continual_learning import ContinualRun, class_incremental
    from adapt.data.digits import DIGIT_NAMES
    from adapt.evaluation import evaluate_checkpoint
    from adapt.train_config import TrainConfig

    scenario = class_incremental("digits", initial=4, increment=3, seed=0, image_size=32, limit=300)
    assert scenario.class_names != list(DIGIT_NAMES)  # shuffled: the order that broke eval
    run_ = ContinualRun(method="ssf", head="linear", learner="naive", train=TrainConfig(epochs=1, batch_size=16),
                        out_dir=tmp_path / "cl")  # fmt: skip
    result = run_.fit(scenario)
    sizes = [len(task.test) for task in scenario.tasks]
    pooled = sum(acc * n for acc, n in zip(result.matrix[-1], sizes)) / sum(sizes)  # the last row, over all images
    scored = evaluate_checkpoint(result.checkpoints[-1], limit=300)
    assert scored.images == sum(sizes)
    assert scored.accuracy == pytest.approx(pooled, abs=1e-9)
    assert scored.accuracy > 0.2  # at chance (0.1) the names were mixed up
    first = evaluate_checkpoint(result.checkpoints[0], limit=300)  # a task checkpoint knows only its classes
    assert first.classes == 4 and first.accuracy == pytest.approx(result.matrix[0][0], abs=1e-9)


def broken_merge(ssf_run: Path, target: Path) -> None:
    """The merged default model with one BatchNorm variance made negative, as a task-arithmetic soup could."""
    ok("merge", ssf_run / "adapter.safetensors", "--out", target.with_name("plain.safetensors"))
    with safe_open(str(target.with_name("plain.safetensors")), framework="pt") as handle:
        meta = dict(handle.metadata())
    tensors = load_file(str(target.with_name("plain.safetensors")))
    key = next(k for k in tensors if k.endswith("running_var"))
    tensors[key] = tensors[key] - 10
    save_file(tensors, str(target), metadata=meta)


def test_non_finite_outputs_are_an_error_not_a_number(ssf_run, tmp_path):
    from conftest import digit_image

    broken = tmp_path / "broken.safetensors"
    broken_merge(ssf_run, broken)
    digit_image(1).save(tmp_path / "one.png")
    for args in (["eval", broken, "--limit", "20"], ["predict", broken, tmp_path / "one.png"]):
        result = run(*args)
        assert result.exit_code == 1, result.output
        assert "computes NaN/Inf outputs" in result.stderr and f"adapt info {broken}" in result.stderr
        assert "%" not in result.stdout
    result = run("tune", *QUICK, "--method", "full", "--weights", broken, "--out", tmp_path / "t")
    assert result.exit_code == 1
    assert "has negative entries" in result.stderr and "lower --lr" not in result.stderr


def test_an_option_given_twice_with_two_values_is_refused(tmp_path):
    for first, second in ((["--rank", "4"], ["--option", "rank=8"]), (["--option", "rank=8"], ["--rank", "4"])):
        result = run("tune", "--method", "lora", *first, *second, *QUICK, "--out", tmp_path / "r")
        assert result.exit_code == 1 and "given twice with different values" in result.stderr
        assert "--rank 4" in result.stderr and "--option rank=8" in result.stderr
    from adapt.methods import method_options

    assert method_options({"rank": 4}, {"rank": 4}) == {"rank": 4}  # the same value twice is no conflict


def test_the_python_api_speaks_parameter_names_and_the_cli_flags(ssf_run, tmp_path):
    from adapt.methods import create_method
    from adapt.outputs import check_output_file

    with pytest.raises(AdaptError) as caught:
        create_method("spt", {"budget": 0.4})
    assert "budget takes a count such as 400000" in str(caught.value) and "str | int" not in str(caught.value)
    with pytest.raises(AdaptError, match=r"^out .* is a folder; give a file name$"):
        check_output_file(tmp_path, overwrite=False)
    result = run("eval", ssf_run / "adapter.safetensors", "--limit", "8", "--out", tmp_path)
    assert result.exit_code == 1 and f"--out {tmp_path} is a folder" in result.stderr
    result = run("tune", "--method", "spt", "--budget", "0.4", *QUICK, "--out", tmp_path / "spt")
    assert "budget takes a count such as 400000, or text such as 0.4M" in result.stderr


def test_a_run_started_from_python_resumes_from_the_command_line(tmp_path):
    from adapt.train_config import TrainConfig
    from adapt.tuning import TuneJob, tune

    out = tmp_path / "api"
    job = TuneJob(method="lora", options={"rank": 2}, image_size=32, limit=40)
    tune(job, TrainConfig(epochs=1, batch_size=16), out)
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["method"] == "lora" and saved["method_options"] == ["rank=2"] and saved["epochs"] == 1
    output = ok("tune", "--out", out, "--resume")
    assert "accuracy" in output


def test_resume_of_a_run_stopped_before_its_first_save_starts_it_again(tmp_path):
    out = tmp_path / "early"
    out.mkdir()
    (out / "config.yaml").write_text(yaml.safe_dump({"image_size": 32, "epochs": 1, "batch_size": 16, "limit": 40}))
    output = ok("tune", "--out", out, "--resume")
    assert "no finished epoch yet" in output and "starting it from the beginning" in output
    assert (out / "adapter.safetensors").is_file()


def test_continual_prints_each_new_row_and_the_matrix_once(tmp_path):
    output = ok("continual", "--head", "linear", "--initial", "4", "--increment", "3", "--epochs", "1", "--image-size", "32",
                "--limit", "120", "--workers", "0", "--precision", "fp32", "--log-with", "csv", "--out", tmp_path / "cl")
    assert output.count("accuracy matrix") == 1
    assert all(f"after task {t}" in output for t in (1, 2, 3))
    assert (tmp_path / "cl" / "task_1" / "log.csv").is_file()


def test_perceptual_init_takes_data_and_out_from_its_config(tmp_path):
    from adapt.data.triplets import make_fixture

    root = make_fixture(tmp_path / "nights", count=12, size=32)
    config = tmp_path / "p.yaml"
    config.write_text(yaml.safe_dump({"data": f"nights:{root}", "out": str(tmp_path / "p.safetensors"), "epochs": 1,
                                      "image_size": 32, "backbone": "test_vit", "batch_size": 4}))  # fmt: skip
    ok("perceptual-init", "--config", config)
    assert (tmp_path / "p.safetensors").is_file()
    assert ok("info", tmp_path / "p.safetensors").startswith(f"{tmp_path / 'p.safetensors'}: perceptual-init backbone")
    result = run("perceptual-init", "--out", tmp_path / "q.safetensors")
    assert result.exit_code == 2 and "Missing option '--data'" in result.stderr


def nights_row(left, right, votes) -> str:
    return f"0,{left},{right},{votes},r.png,r.png,r.png,train,True\n"


@pytest.mark.parametrize("left, right, votes, phrase", [
    (-1, 7, 6, "must be finite and >= 0"),
    (5, 5, 6, "neither counts adding up to votes"),
    (0.5, 0.7, 6, "neither counts adding up to votes"),
    (3, 3, 6.5, "votes must be a whole number"),
    ("x", 3, 6, "must be numbers"),
])  # fmt: skip
def test_nights_votes_are_checked_row_by_row(tmp_path, left, right, votes, phrase):
    from conftest import digit_image

    from adapt.data.triplets import read_nights

    digit_image(0).save(tmp_path / "r.png")
    header = "id,left_vote,right_vote,votes,ref_path,left_path,right_path,split,is_imagenet\n"
    (tmp_path / "data.csv").write_text(header + nights_row(left, right, votes))
    with pytest.raises(AdaptError, match=f"row 2: .*{phrase}"):
        read_nights(tmp_path)


def test_nights_votes_as_whole_floats_or_as_shares_are_read(tmp_path):
    from conftest import digit_image

    from adapt.data.triplets import read_nights

    digit_image(0).save(tmp_path / "r.png")
    header = "id,left_vote,right_vote,votes,ref_path,left_path,right_path,split,is_imagenet\n"
    (tmp_path / "data.csv").write_text(header + nights_row("5.0", "1.0", "6.0") + nights_row("0.0", "1.0", 6)
                                       + nights_row(2, 2, 4))  # fmt: skip
    triplets = read_nights(tmp_path)["train"]
    assert [t.p_a for t in triplets] == [pytest.approx(5 / 6), 0.0]  # the 4-vote row is below the minimum


def test_a_failed_space_reservation_leaves_no_temporary_file(tmp_path, monkeypatch):
    import errno

    from adapt.merging import tensors as tensor_io

    def no_room(handle, size):
        raise OSError(errno.EFBIG, "File too large")

    monkeypatch.setattr(tensor_io, "_reserve", no_room)
    order = [("w", (4,), torch.float32), ("b", (2,), torch.float32)]
    for shard_bytes in (None, 16):  # one file, and two shards
        with pytest.raises(OSError):
            with tensor_io.StreamingWriter(tmp_path / "x.safetensors", order, max_shard_bytes=shard_bytes):
                pass
        assert list(tmp_path.iterdir()) == []


def test_lora_adapters_of_different_ranks_soup_once_folded(tmp_path):
    from adapt.evaluation import evaluate_checkpoint

    for rank in (2, 4):
        ok("tune", "--method", "lora", "--rank", rank, *QUICK, "--out", tmp_path / f"r{rank}")
    ingredients = [tmp_path / f"r{rank}" / "adapter.safetensors" for rank in (2, 4)]
    ok("soup", *ingredients, "--out", tmp_path / "soup.safetensors")
    for rank in (2, 4):
        ok("merge", tmp_path / f"r{rank}" / "adapter.safetensors", "--out", tmp_path / f"m{rank}.safetensors")
    soup, m2, m4 = (load_file(str(tmp_path / f"{n}.safetensors")) for n in ("soup", "m2", "m4"))
    for key in soup:
        if soup[key].is_floating_point():
            torch.testing.assert_close(soup[key], (m2[key] + m4[key]) / 2, rtol=0, atol=1e-6)
    ok("soup", *ingredients, "--rank", "4", "--out", tmp_path / "rank.safetensors")
    assert evaluate_checkpoint(tmp_path / "rank.safetensors", limit=60).images == 60


def test_import_peft_uses_r_and_alpha_and_refuses_a_rank_that_disagrees(tmp_path):
    ok("tune", "--method", "lora", "--rank", "2", *QUICK, "--out", tmp_path / "lora")
    ok("export", tmp_path / "lora" / "adapter.safetensors", "--out", tmp_path / "peft")
    config_file = tmp_path / "peft" / "adapter_config.json"
    config = json.loads(config_file.read_text())
    config["lora_alpha"] = 16
    config_file.write_text(json.dumps(config))
    ok("import-peft", tmp_path / "peft", "--out", tmp_path / "a16.safetensors")
    with safe_open(str(tmp_path / "a16.safetensors"), framework="pt") as handle:
        assert json.loads(handle.metadata()["method_options"])["alpha"] == 16
    config["r"] = 4
    config_file.write_text(json.dumps(config))
    result = run("import-peft", tmp_path / "peft", "--out", tmp_path / "r4.safetensors")
    assert result.exit_code == 1 and "says r=4, but its tensors have rank 2" in result.stderr
    assert not (tmp_path / "r4.safetensors").exists()


def test_export_takes_out_and_overwrite_and_writes_hub_folders(tmp_path, ssf_run):
    ok("tune", "--method", "lora", "--rank", "2", *QUICK, "--out", tmp_path / "lora")
    lora = tmp_path / "lora" / "adapter.safetensors"
    ok("export", lora, "--out", tmp_path / "e")
    assert "pass --overwrite" in run("export", lora, "--out", tmp_path / "e").stderr
    ok("export", lora, "--out", tmp_path / "e", "--overwrite")
    assert "old form" in ok("export", lora, tmp_path / "e2")  # the positional folder still works, with a note
    assert "now --overwrite" in ok("export", lora, "--out", tmp_path / "e2", "--force")
    ok("export", ssf_run / "adapter.safetensors", "--format", "hub", "--out", tmp_path / "hub")
    assert {"config.json", "model.safetensors"} <= {p.name for p in (tmp_path / "hub").iterdir()}


def test_every_image_size_goes_through_one_bound():
    from adapt.continual_learning import class_incremental
    from adapt.train_config import TrainConfig
    from adapt.tuning import TuneJob, prepare

    with pytest.raises(AdaptError, match="image size must be 16 to 1024 px, got 100000"):
        class_incremental("digits", 2, 2, image_size=100000)
    with pytest.raises(AdaptError, match="image size must be 16 to 1024 px, got 5000"):
        prepare(TuneJob(image_size=5000), "digits", TrainConfig())
    with pytest.raises(AdaptError, match="whole number of pixels"):
        prepare(TuneJob(image_size=32.5), "digits", TrainConfig())
