"""Bad inputs and faults, as a careless user or an attacker would give them.

Every case asserts the exit status, exactly one line on stderr with the key phrase, no
traceback, no file of the world changed (sha256 before and after), and no temporary or
lock file left behind. The world (runs, checkpoints, images, data, soups) is built once.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from adapt.cli import cli
from conftest import digit_image

QUICK = ["--image-size", "32", "--epochs", "1", "--batch-size", "8", "--limit", "8"]
W = "{W}"  # stands for the world folder in the case table


def invoke(args: list, cwd: Path | None = None):
    previous = os.getcwd()
    if cwd is not None:
        os.chdir(cwd)
    try:
        return CliRunner().invoke(cli, [str(a) for a in args])
    finally:
        os.chdir(previous)


def build_ok(args: list) -> None:
    result = invoke(args)
    assert result.exit_code == 0, result.output


def rewrite(source: Path, target: Path, metadata: dict | None = None, tensors: dict | None = None) -> None:
    """A copy of a checkpoint with some metadata fields or tensors replaced (None deletes)."""
    with safe_open(str(source), framework="pt") as handle:
        meta = dict(handle.metadata())
    data = load_file(str(source))
    for key, value in (metadata or {}).items():
        meta.pop(key) if value is None else meta.__setitem__(key, value)
    for key, value in (tensors or {}).items():
        data.pop(key) if value is None else data.__setitem__(key, value)
    save_file(data, str(target), metadata=meta)


def vtab_task(root: Path, lines: list[bytes]) -> None:
    (root / "images").mkdir(parents=True)
    digit_image(0).save(root / "images" / "0.png")
    for split in ("train800val200", "test", "train800", "val200"):
        (root / f"{split}.txt").write_bytes(b"\n".join(lines) + b"\n")


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    w = tmp_path_factory.mktemp("world")
    build_ok(["tune", *QUICK, "--out", w / "ssf"])
    build_ok(["tune", "--method", "lora", "--rank", "2", *QUICK, "--out", w / "lora"])
    build_ok(["merge", w / "ssf" / "adapter.safetensors", "--out", w / "merged.safetensors"])
    build_ok(["sensitivity", "--image-size", "32", "--batches", "1", "--batch-size", "4", "--out", w / "sens.safetensors"])
    ssf = w / "ssf" / "adapter.safetensors"
    scale = next(k for k in load_file(str(ssf)) if k.endswith(".scale"))

    (w / "img").mkdir()
    digit_image(3).save(w / "img" / "good.png")
    (w / "img" / "text.png").write_text("not an image")
    (w / "img" / "empty.png").write_bytes(b"")
    (w / "img" / "dir.png").mkdir()

    meta = w / "meta"
    meta.mkdir()
    bad_meta = {
        "size_huge": {"image_size": "100000"}, "size_float": {"image_size": "32.7"}, "size_neg": {"image_size": "-5"},
        "class_ints": {"class_names": "[1, 2]"}, "class_str": {"class_names": '"x"'}, "class_empty": {"class_names": "[]"},
        "opt_type": {"method_options": '{"init_std": "big", "targets": null}'},
        "opt_regex": {"method_options": '{"init_std": 0.02, "targets": "("}'},
        "opt_unknown": {"method_options": '{"init_std": 0.02, "rank": 4}'},
        "mean_short": {"mean": "[0.5]"}, "std_zero": {"std": "[0, 0, 0]"}, "mean_nan": {"mean": "[NaN, 0.5, 0.5]"},
        "format_9": {"adapt_format": "9"}, "no_method": {"method": None}, "json_bad": {"image_size": "{"},
        "training_list": {"training": "[1]"}, "head_bad": {"head": '{"kind": "linear"}'},
        "head_kind": {"head": '{"kind": "nope", "options": {}, "task_sizes": [10]}'},
        "method_unknown": {"method": "nope"}, "deep_json": {"method_options": "[" * 100000},
        "seed_text": {"training": '{"seed": "abc", "data": "digits"}'}, "data_int": {"training": '{"data": 5}'},
    }  # fmt: skip
    for name, fields in bad_meta.items():
        rewrite(ssf, meta / f"{name}.safetensors", metadata=fields)
    original = load_file(str(ssf))[scale]
    bad_tensors = {
        "nan": original.clone().fill_(float("nan")), "int": original.to(torch.int32), "f8": original.to(torch.float8_e4m3fn),
        "u16": original.to(torch.uint16) if hasattr(torch, "uint16") else original.to(torch.int16),
        "extra": None, "shape": torch.ones(3),
    }  # fmt: skip
    for name, tensor in bad_tensors.items():
        changes = {"blocks.extra": torch.ones(1)} if name == "extra" else {scale: tensor}
        rewrite(ssf, meta / f"t_{name}.safetensors", tensors=changes)
    (meta / "truncated.safetensors").write_bytes(ssf.read_bytes()[:200])

    weights = w / "w"
    weights.mkdir()
    (weights / "text.safetensors").write_text("hello")
    (weights / "empty.safetensors").write_bytes(b"")
    (weights / "text.pth").write_text("hello")
    (weights / "empty.pth").write_bytes(b"")
    torch.save([1, 2, 3], weights / "list.pth")
    (weights / "dir").mkdir()
    from adapt.backbones import create_backbone

    vit, _ = create_backbone("test_vit", "random", num_classes=3)
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, weights / "vit.safetensors")
    (w / "tune_bad.yaml").write_text("epochs: 0\n")
    (w / "peftbad").mkdir()
    (w / "peftbad" / "adapter_config.json").write_text("{not json")
    (w / "peftbad" / "adapter_model.safetensors").write_text("x")
    (w / "inthub").mkdir()
    (w / "inthub" / "config.json").write_text('{"architecture": 5}')
    (w / "badhub").mkdir()
    (w / "badhub" / "config.json").write_text("{not json")

    vtab = w / "vtab"
    vtab_task(vtab / "bigl", [b"images/0.png 99999999"])
    vtab_task(vtab / "latin1", ["images/0.png 0 caf\xe9".encode("latin-1")])
    vtab_task(vtab / "badline", [b"images/0.png"])
    vtab_task(vtab / "neg", [b"images/0.png -1"])
    vtab_task(vtab / "missing", [b"images/nothere.png 0"])
    vtab_task(vtab / "textimg", [b"images/t.png 0"])
    (vtab / "textimg" / "images" / "t.png").write_text("text")
    vtab_task(vtab / "dirimg", [b"images/d.png 0"])
    (vtab / "dirimg" / "images" / "d.png").mkdir()

    folders = w / "folders"
    for split, classes in (("train", {"a": 2, "b": 0}), ("test", {"a": 1})):
        for name, count in classes.items():
            (folders / "emptyclass" / split / name).mkdir(parents=True)
            for i in range(count):
                digit_image(i).save(folders / "emptyclass" / split / name / f"{i}.png")
    for split in ("train", "test"):
        (folders / "oneclass" / split / "a").mkdir(parents=True)
        digit_image(2).save(folders / "oneclass" / split / "a" / "2.png")
    (folders / "notrain" / "test").mkdir(parents=True)
    for split, name in (("train", "a"), ("test", "z")):
        (folders / "extraclass" / split / name).mkdir(parents=True)
        digit_image(1).save(folders / "extraclass" / split / name / "1.png")

    soup = w / "soup"
    soup.mkdir()
    save_file({"w": torch.ones(4), "b": torch.zeros(2)}, soup / "a.safetensors")
    save_file({"w": torch.full((4,), 2.0), "b": torch.ones(2)}, soup / "b.safetensors")
    save_file({"w": torch.zeros(4), "b": torch.zeros(2)}, soup / "base.safetensors")
    save_file({"w": torch.ones(5), "b": torch.zeros(2)}, soup / "shape.safetensors")
    save_file({"w": torch.ones(4, dtype=torch.int32), "b": torch.zeros(2)}, soup / "int.safetensors")
    save_file({"w": torch.tensor([1.0, float("nan"), 0, 0]), "b": torch.zeros(2)}, soup / "nan.safetensors")
    save_file({"w": torch.full((4,), 1e5), "b": torch.zeros(2)}, soup / "big.safetensors")
    save_file({"w": torch.full((4,), 2e5), "b": torch.zeros(2)}, soup / "big2.safetensors")
    if hasattr(torch, "uint16"):
        save_file({"w": torch.ones(4, dtype=torch.uint16)}, soup / "u16.safetensors")
        save_file({"w": torch.ones(4, dtype=torch.uint16)}, soup / "u16b.safetensors")
    yamls = {"density": "recipe: ties\ndensity: 5\n", "drop": "recipe: dare\ndrop: 1.0\n", "dtype": "dtype: int8\n",
             "unknown": "recipie: ties\n", "list": "- a\n- b\n", "broken": "a: [1, 2\n"}  # fmt: skip
    for name, text in yamls.items():
        (soup / f"{name}.yaml").write_text(text)
    (soup / "latin1.yaml").write_bytes("out: caf\xe9".encode("latin-1"))

    alloc = w / "alloc"
    alloc.mkdir()
    good = {"budget": 10, "rank": 2, "structured": [], "unstructured": {"conv_head.weight": [0, 1]}, "vectors": [],
            "costs": {}, "sizes": {}, "selected": {}, "structured_module": "lora"}  # fmt: skip
    allocations = {
        "bad_json": "{", "types": json.dumps({**good, "budget": "x"}),
        "unknown": json.dumps({**good, "unstructured": {"nothing.weight": [0]}}),
        "negidx": json.dumps({**good, "unstructured": {"conv_head.weight": [-1]}}),
        "oob": json.dumps({**good, "unstructured": {"conv_head.weight": [10**9]}}),
        "extra_key": json.dumps({**good, "bduget": 3}), "module": json.dumps({**good, "structured_module": "mlp"}),
    }  # fmt: skip
    for name, text in allocations.items():
        (alloc / f"{name}.json").write_text(text)

    (w / "lr_list.yaml").write_text("lr: [1, 2]\n")
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"] + [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    (w / "bomb.yaml").write_text("\n".join(levels) + "\nlr: *a8\n")  # 9 levels of 9 aliases: 387 million items
    (w / "lr_true.yaml").write_text("lr: true\n")
    (w / "epochs_yes.yaml").write_text("epochs: yes\n")
    (w / "seed_map.yaml").write_text("seed: {a: 1}\n")
    (w / "hugehub").mkdir()
    (w / "hugehub" / "config.json").write_text(json.dumps({"architecture": "test_vit",
                                                           "pretrained_cfg": {"input_size": [3, -1, 100000]}}))  # fmt: skip
    with safe_open(str(ssf), framework="pt") as handle:
        names = json.loads(handle.metadata()["class_names"])
    rewrite(ssf, meta / "permuted.safetensors", metadata={"class_names": json.dumps(names[::-1])})
    merged = load_file(str(w / "merged.safetensors"))
    variance = next(k for k in merged if k.endswith("running_var"))
    rewrite(w / "merged.safetensors", meta / "negvar.safetensors", tensors={variance: merged[variance] - 10})
    build_ok(["export", w / "lora" / "adapter.safetensors", "--out", w / "peft_r"])
    peft_config = json.loads((w / "peft_r" / "adapter_config.json").read_text())
    (w / "peft_r" / "adapter_config.json").write_text(json.dumps({**peft_config, "r": 4}))
    build_ok(["export", w / "lora" / "adapter.safetensors", "--out", w / "peft_user"])  # then the user's files in base/
    (w / "peft_user" / "base" / "notes.txt").write_text("mine")
    (w / "peft_user" / "base" / "mine").mkdir()
    (w / "peft_user" / "base" / "mine" / "k.txt").write_text("mine too")
    (w / "peft_foreign").mkdir()  # a peft folder another tool wrote: no adapt.json
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (w / "peft_foreign" / name).write_bytes((w / "peft_r" / name).read_bytes())
    (w / "nights_neg").mkdir()
    digit_image(0).save(w / "nights_neg" / "r.png")
    (w / "nights_neg" / "data.csv").write_text("id,left_vote,right_vote,votes,ref_path,left_path,right_path,split\n"
                                               "0,-1,7,6,r.png,r.png,r.png,train\n")  # fmt: skip

    trip = w / "trip"
    trip.mkdir()
    digit_image(0).save(trip / "r.png")
    (trip / "latin1.csv").write_bytes("ref,a,b,choice\nr.png,r.png,r.png,caf\xe9\n".encode("latin-1"))
    (trip / "missingcol.csv").write_text("ref,a,b\nr.png,r.png,r.png\n")
    (trip / "badchoice.csv").write_text("ref,a,b,choice\nr.png,r.png,r.png,c\n")
    (trip / "noimage.csv").write_text("ref,a,b,choice\nr.png,gone.png,r.png,a\n")
    (trip / "good.csv").write_text("ref,a,b,choice\nr.png,r.png,r.png,a\n")
    summaries = {"notjson": "{", "list": "[1]", "acc_text": '{"test_acc": "x", "trainable_params": 1, "total_params": 2}',
                 "acc_nan": '{"test_acc": NaN, "trainable_params": 1, "total_params": 2}', "no_counts": '{"test_acc": 0.5}',
                 "counts_swapped": '{"test_acc": 0.5, "trainable_params": 9, "total_params": 2}',
                 "acc_negative": '{"test_acc": -1, "trainable_params": 1, "total_params": 2}',
                 "latin1": '{"test_acc": "caf\xe9"}'}  # fmt: skip
    for name, text in summaries.items():
        (w / "runs" / name).mkdir(parents=True)
        (w / "runs" / name / "summary.json").write_bytes(text.encode("latin-1"))
    return w


def C(args: str, phrase: str, code: int = 1, cwd: str | None = None) -> tuple[str, str, int, str | None]:
    return args, phrase, code, cwd


T = f"--image-size 32 --limit 8 --out {W}/out"  # no epochs: each case fails before training
CKPT, LORA = f"{W}/ssf/adapter.safetensors", f"{W}/lora/adapter.safetensors"
SOUP = f"{W}/soup"
CASES = [
    # training hyperparameters: finite, in range, of the right type
    C(f"tune --lr inf {T}", "lr must be finite"),
    C(f"tune --init-from {W}/nowhere.safetensors {T}", "nowhere.safetensors"),
    C(f"tune --init-from {SOUP}/a.safetensors {T}", "not an adapt checkpoint"),
    C(f"tune --method lora --init-from {CKPT} --backbone test_vit --weights random {T}", "was trained on"),
    C(f"tune --lr nan {T}", "lr must be finite"),
    C(f"tune --method hst --grad-checkpointing {T}", "hst cannot use gradient checkpointing"),
    C(f"tune --grad-checkpointing yes {T}", "Got unexpected extra argument (yes)", 2),
    C(f"tune --lr 0 {T}", "Invalid value for '--lr'", 2),
    C(f"tune --lr 1e6 {T}", "lr must be <= 10"),
    C(f"tune --weight-decay nan {T}", "weight_decay must be finite"),
    C(f"tune --weight-decay -1 {T}", "Invalid value for '--weight-decay'", 2),
    C(f"tune --warmup nan {T}", "warmup must be finite"),
    C(f"tune --config {W}/bomb.yaml {T}", "YAML anchors and aliases (&, *) are not read here"),
    C(f"info {W}/bomb.yaml", "YAML anchors and aliases (&, *) are not read here"),
    C(f"soup {SOUP}/a.safetensors {SOUP}/b.safetensors --config {W}/bomb.yaml --out {W}/s.safetensors",
      "YAML anchors and aliases"),
    C(f"tune --config {W}/lr_true.yaml {T}", "lr takes one number, got true (YAML reads true/false/yes/no as booleans)"),
    C(f"tune --config {W}/epochs_yes.yaml {T}", "epochs takes one whole number, got true"),
    C(f"tune --lr-stepping daily {T}", "Invalid value for '--lr-stepping'", 2),
    C(f"tune --eval-from 0 {T}", "Invalid value for '--eval-from'", 2),
    C(f"tune --eval-last -1 {T}", "Invalid value for '--eval-last'", 2),
    C(f"tune --interpolation nearest {T}", "Invalid value for '--interpolation'", 2),
    C(f"tune --train-crop center {T}", "Invalid value for '--train-crop'", 2),
    C(f"tune --drop-last --batch-size 200 --limit 100 --out {W}/out", "not one full batch of 200"),
    C(f"tune --method lora --option qkv_blocks=q,x {T}", "must name some of q, k, v"),
    C(f"tune --method spt --budget 0.1M,abc {T}", "cannot read budget 'abc'"),  # before the first budget trains
    C(f"tune --method spt --budget 0.1M, {T}", "cannot read budget ''"),
    C(f"tune --method spt --budget 0.1M,0 {T}", "budget '0' is zero"),
    C(f"tune --method spt --budget 100k,0.1M {T}", "--budget lists '100k' and '0.1M', the same value twice"),
    C(f"tune --method lora --option init=vpetl {T}", "give qkv_blocks"),
    C(f"tune --method lora --option qkv_blocks=q,v {T}", "qkv_blocks needs a ViT's fused qkv"),
    C(f"tune --method hst --option side_drop_path=1 {T}", "side_drop_path must be < 1"),
    C(f"tune --warmup 2 {T}", "Invalid value for '--warmup'", 2),
    C(f"tune --seed 100000000000000000000000 {T}", "seed must be <="),
    C(f"tune --seed -1 {T}", "seed must be >= 0"),
    C(f"tune --epochs 0 {T}", "Invalid value for '--epochs'", 2),
    C(f"tune --batch-size 0 {T}", "Invalid value for '--batch-size'", 2),
    C(f"tune --image-size 5000 --out {W}/out", "Invalid value for '--image-size'", 2),
    C(f"tune --image-size 8 --out {W}/out", "Invalid value for '--image-size'", 2),
    C(f"tune --epochs x {T}", "Invalid value for '--epochs'", 2),
    C(f"tune --no-such-flag {T}", "No such option", 2),
    # method options
    C(f"tune --method lora --alpha nan {T}", "alpha must be finite"),
    C(f"tune --method lora --alpha -1 {T}", "alpha must be > 0"),
    C(f"tune --method lora --rank 0 {T}", "method lora: rank must be >= 1, got 0"),
    C(f"tune --method lora --rank 2.5 {T}", "method lora: rank takes a whole number (e.g. 8), got 2.5"),
    C(f"tune --method lora --dropout 1 {T}", "method lora: dropout must be < 1"),
    C(f"tune --method lora --targets ( {T}", "not a valid regular expression"),
    C(f"tune --method lora --targets nothing-matches {T}", "match"),
    C(f"tune --option init_std=-1 {T}", "init_std must be >= 0"),
    C(f"tune --option init_std=nan {T}", "init_std must be finite, got nan"),
    C(f"tune --option init_std=\"big\" {T}", "init_std takes a number (e.g. 0.5)"),
    C(f"tune --option targets=( {T}", "not a valid regular expression"),
    C(f"tune --option targets=nomatch {T}", "match no linear, conv or norm layer"),
    C(f"tune --option rank=4 {T}", "unknown option 'rank'"),
    C(f"tune --option init_sdt=0.1 {T}", "did you mean 'init_std'"),
    C(f"tune --option noequals {T}", "--option expects key=value"),
    C(f"tune --method hst --option widths=a,b,c,d {T}", "hst widths are 4 integers"),
    C(f"tune --method hst --option mlp_ratio=0 {T}", "mlp_ratio must be > 0"),
    C(f"tune --budget 1% {T}", "method ssf: unknown option 'budget'"),
    C(f"tune --method lora --allocation {W}/alloc/negidx.json {T}", "method lora: unknown option 'allocation'"),
    C(f"tune --method spt --budget 1% --allocation {W}/alloc/negidx.json {T}", "--budget (allocated from fresh sensitivity) or --allocation FILE, not both"),
    C(f"tune --method spt --budget lots {T}", "cannot read budget"),
    C(f"tune --method spt --budget 1% --alpha-threshold 0 {T}", "alpha_threshold must be > 0"),
    C(f"tune --method spt --budget 1% --option budget_rule=closest {T}", "budget_rule must be one of exact, official"),
    C(f"tune --method spt --budget 1% --option structured_dropout=1 {T}", "structured_dropout must be < 1"),
    C(f"tune --method hst --option variant=heavy {T}", "variant must be one of paper, light"),
    C(f"tune --method hst --option heads=2,4 {T}", "hst needs 4 heads"),
    C(f"tune --method hst --option widths=32,50,64,72 {T}", "multiples of their stage's heads"),
    C(f"tune --method hst --option variant=light --option widths=32,50,64,72 {T}", "multiples of 8"),
    C(f"tune --method spt --budget 1% --option fold_batchnorm=maybe {T}", "fold_batchnorm takes true or false"),
    C(f"tune --method spt {T}", "needs --budget"),
    C(f"tune --method spt --allocation {W}/alloc/bad_json.json {T}", "cannot read allocation"),
    C(f"tune --method spt --allocation {W}/alloc/types.json {T}", "budget takes a whole number"),
    C(f"tune --method spt --allocation {W}/alloc/unknown.json {T}", "SPT allocation names nothing.weight"),
    C(f"tune --method spt --allocation {W}/alloc/negidx.json {T}", "inconsistent"),
    C(f"tune --method spt --allocation {W}/alloc/oob.json {T}", "fall outside"),
    C(f"tune --method spt --allocation {W}/alloc/extra_key.json {T}", "did you mean 'budget'"),
    C(f"tune --method spt --allocation {W}/alloc/module.json {T}", "structured_module must be one of"),
    C(f"tune --method spt --allocation {W}/alloc/none.json {T}", "none.json not found"),
    # data
    C(f"tune --data mnist {T}", "unknown data spec"),
    C(f"tune --data vtab:{W}/nope {T}", "VTAB folder not found"),
    C(f"tune --data vtab:{W}/vtab/bigl {T}", "is too large"),
    C(f"tune --data vtab:{W}/vtab/latin1 {T}", "is not UTF-8 text"),
    C(f"tune --data vtab:{W}/vtab/badline {T}", "expected '<image path> <label>'"),
    C(f"tune --data vtab:{W}/vtab/neg {T}", "expected '<image path> <label>'"),
    C(f"tune --data vtab:{W}/vtab/missing {T}", "image not found"),
    C(f"tune --data vtab:{W}/vtab/textimg {T}", "unreadable image"),
    C(f"tune --data vtab:{W}/vtab/dirimg {T}", "not a regular file"),
    C(f"tune --data folder:{W}/folders/emptyclass {T}", "with no images"),
    C(f"tune --data folder:{W}/folders/notrain {T}", "has no train/ subfolder"),
    C(f"tune --data folder:{W}/folders/extraclass {T}", "is not among the classes"),
    C(f"tune --data folder:{W}/nope {T}", "data folder not found"),
    C(f"tune --split-protocol x {T}", "Invalid value for '--split-protocol'", 2),
    C(f"tune --precision fp16 {T}", "fp16 needs a GPU"),
    C(f"tune --log-with tensorbord {T}", "'tensorbord' is not a tracker"),
    C(f"tune --log-with csv,all,x {T}", "'x' is not a tracker"),
    *([C(f"tune --log-with wandb {T}", "needs the wandb package: pip install 'adapt-vision[wandb]'")]
      if importlib.util.find_spec("wandb") is None else []),
    C(f"tune --data folder:{W}/folders/oneclass --augment sideways {T}", "not on, off or a timm auto-augment policy"),
    C(f"tune --augment on {T}", "digits are 8x8 drawings"),
    C(f"tune --config {W}/none.yaml {T}", "none.yaml not found"),
    C(f"tune --config {SOUP}/unknown.yaml {T}", "did you mean"),
    C(f"tune --config {SOUP}/list.yaml {T}", "must be a mapping"),
    C(f"tune --config {SOUP}/broken.yaml {T}", "cannot read config"),
    C(f"tune --config {SOUP}/latin1.yaml {T}", "is not UTF-8 text"),
    C(f"tune --config {W}/tune_bad.yaml {T}", "Invalid value for '--epochs'"),
    C(f"continual --config {SOUP}/unknown.yaml {T}", "unknown option 'recipie'"),
    C(f"perceptual-init --data triplets:x.csv --config {SOUP}/list.yaml --out {W}/p.safetensors", "must be a mapping"),
    C(f"tune --image-size 32 --limit 8 --out {W}/ssf --resume --lr 0.5", "cannot resume with other settings: --lr"),
    C(f"eval {CKPT} --out {CKPT}", "is one of the inputs"),
    C(f"eval {CKPT} --out {W}/merged.safetensors", "exists; pass --overwrite"),
    # backbones and weights
    C(f"tune --backbone resnet_9000 {T}", "unknown backbone"),
    C(f"tune --backbone resnet181 {T}", "unknown backbone 'resnet181' (did you mean 'resnet18'?)"),
    C(f"soup {SOUP}/a.safetensors {SOUP}/b.safetensors --recipe task-arithmetic --base pre.safetensors "
      f"--out {W}/s.safetensors", "--base pre.safetensors: no such file"),
    C(f"tune --backbone test_vit {T}", "--weights random"),
    C(f"tune --backbone local-dir:{W}/nope {T}", "config.json not found"),
    C(f"tune --backbone local-dir: {T}", "say which folder"),
    C(f"tune --backbone hf-hub:someone/nothing {T}", "not in the local Hugging Face cache"),
    C(f"tune --backbone local-dir:{W}/badhub {T}", "is not a timm config"),
    C(f"tune --weights {W}/w/text.safetensors {T}", "cannot read weights file"),
    C(f"tune --weights {W}/w/empty.safetensors {T}", "cannot read weights file"),
    C(f"tune --weights {W}/w/text.pth {T}", "is not a weights file"),
    C(f"tune --weights {W}/w/empty.pth {T}", "is not a weights file"),
    C(f"tune --weights {W}/w/list.pth {T}", "does not hold a state dict"),
    C(f"tune --weights {W}/w/dir {T}", "no weights in folder"),
    C(f"tune --weights {W}/w/none.safetensors {T}", "weights file not found"),
    C(f"tune --weights {W}/w/vit.safetensors {T}", "do not fit"),
    C(f"tune --backbone test_vit --weights embedded {T}", "embedded weights exist only"),
    # the output folder
    C(f"tune --image-size 32 --limit 8 --out {CKPT}", "is a file"),
    C(f"tune --image-size 32 --limit 8 --out {W}/ssf", "already holds a run"),
    C(f"tune --image-size 32 --limit 8 --out {W}/ssf --resume --overwrite", "give one of them"),
    C(f"tune --image-size 32 --limit 8 --out {CKPT}/sub", "cannot write to"),
    C(f"tune --image-size 32 --limit 8 --out {W}/fresh --resume", "nothing to resume"),
    # checkpoints whose metadata lies or is malformed
    C(f"info {W}/meta/size_huge.safetensors", "image_size must be <= 1024"),
    C(f"predict {W}/meta/size_huge.safetensors {W}/img/good.png", "image_size must be <= 1024"),
    C(f"info {W}/meta/size_float.safetensors", "image_size takes a whole number"),
    C(f"info {W}/meta/size_neg.safetensors", "image_size must be >= 16"),
    C(f"info {W}/meta/class_ints.safetensors", "class_names takes a list of strings, got [1, 2]"),
    C(f"info {W}/meta/class_str.safetensors", "class_names takes a list of strings"),
    C(f"info {W}/meta/class_empty.safetensors", "at least one class name"),
    C(f"eval {W}/meta/opt_type.safetensors", "init_std takes a number (e.g. 0.5)"),
    C(f"eval {W}/meta/opt_regex.safetensors", "not a valid regular expression"),
    C(f"eval {W}/meta/opt_unknown.safetensors", "unknown option 'rank'"),
    C(f"info {W}/meta/mean_short.safetensors", "3 means"),
    C(f"info {W}/meta/std_zero.safetensors", "positive stds"),
    C(f"info {W}/meta/mean_nan.safetensors", "mean must be finite"),
    C(f"info {W}/meta/format_9.safetensors", "checkpoint format 9"),
    C(f"info {W}/meta/no_method.safetensors", "metadata field 'method' is missing"),
    C(f"info {W}/meta/json_bad.safetensors", "is not valid JSON"),
    C(f"info {W}/meta/deep_json.safetensors", "is not valid JSON"),
    C(f"info {W}/meta/training_list.safetensors", "training takes a mapping"),
    C(f"eval {W}/meta/head_bad.safetensors", "head description is malformed"),
    C(f"eval {W}/meta/seed_text.safetensors", "training seed must be a whole number"),
    C(f"eval {W}/meta/data_int.safetensors", "data a string"),
    C(f"tune --backbone local-dir:{W}/inthub {T}", "is not a timm model"),
    C(f"eval {W}/meta/head_kind.safetensors", "unknown head"),
    C(f"eval {W}/meta/method_unknown.safetensors", "unknown method"),
    C(f"eval {W}/meta/t_nan.safetensors", "NaN or Inf"),
    C(f"eval {W}/meta/t_int.safetensors", "dtype torch.int32"),
    C(f"eval {W}/meta/t_f8.safetensors", "dtype torch.float8"),
    C(f"eval {W}/meta/t_u16.safetensors", "dtype torch."),
    C(f"eval {W}/meta/t_extra.safetensors", "unexpected: blocks.extra"),
    C(f"eval {W}/meta/t_shape.safetensors", "wrong shapes"),
    C(f"eval {W}/meta/truncated.safetensors", "truncated or not a safetensors file"),
    C(f"eval {SOUP}/a.safetensors", "not an adapt checkpoint"),
    C(f"eval {W}/nope.safetensors", "checkpoint not found"),
    C(f"eval {W}/img", "is a folder without model.safetensors (a hub folder) or adapter.safetensors"),
    C(f"eval {CKPT} --data mnist", "unknown data spec"),
    C(f"eval {CKPT} --data folder:{W}/folders/oneclass", "10 of them not in the data"),
    C(f"eval {CKPT} --weights {W}/w/vit.safetensors", "do not fit"),
    C(f"eval {CKPT} --split nope", "Invalid value for '--split'", 2),
    # images to predict
    C(f"predict {CKPT} {W}/img/text.png", "unreadable image"),
    C(f"predict {CKPT} {W}/img/empty.png", "unreadable image"),
    C(f"predict {CKPT} {W}/img/dir.png", "no images in"),  # a folder: its images, and it has none
    C(f"predict {CKPT} {W}/img/good.png --out {W}/img/preds.png", "is named as an image; predictions are text"),
    C(f"predict {CKPT} {W}/img/none.png", "image not found"),
    C(f"predict {CKPT} {W}/img/good.png --top-k 0", "Invalid value for '--top-k'", 2),
    C(f"predict {CKPT}", "Missing argument", 2),
    # eval and predict outputs; info; presets and the new training options
    C(f"eval {CKPT} --plot {W}/merged.safetensors", "exists; pass --overwrite"),
    C(f"eval {CKPT} --plot {CKPT}", "is one of the inputs"),
    C(f"predict {CKPT} {W}/img/good.png --out {W}/merged.safetensors", "exists; pass --overwrite"),
    C(f"predict {CKPT} {W}/img/good.png --format xml", "Invalid value for '--format'", 2),
    C(f"info {W}/img/text.png", "not a file adapt writes"),
    C(f"info {W}/nothing.json", "not found"),
    C(f"presets show nope", "no preset 'nope'"),
    C(f"tune --preset nope {T}", "'nope' is not a preset"),
    C(f"tune --preset ties {T}", "'ties' is for adapt soup"),
    C(f"tune --lr 0.01 --min-lr 0.1 {T}", "must not exceed --lr"),
    C(f"tune --head-init ones {T}", "Invalid value for '--head-init'", 2),
    C(f"tune --normalize weird {T}", "Invalid value for '--normalize'", 2),
    C(f"tune --weights {W}/img/good.png.npz {T}", "weights file not found"),
    C(f"soup {SOUP}/a.safetensors {SOUP}/b.safetensors --recipe ties --base no/such.safetensors --out {W}/o.safetensors",
      "no such file"),
    C(f"soup {SOUP}/a.safetensors {SOUP}/b.safetensors --preset ssf-vtab --out {W}/o.safetensors", "is for adapt tune"),
    # merge and export: never over an input or the user's files
    C(f"merge {CKPT} --out {CKPT}", "is one of the inputs"),
    C(f"merge {CKPT} --out {W}/merged.safetensors", "exists; pass --overwrite"),
    C(f"merge {CKPT} --out {W}/img", "holds other files"),
    C(f"merge {CKPT} --format hub --out {W}/ssf", "holds other files"),
    C(f"merge {CKPT} --out {W}/x.safetensors --weights {W}/w/vit.safetensors", "do not fit"),
    C(f"merge {W}/meta/t_nan.safetensors --out {W}/x.safetensors", "NaN or Inf"),
    C(f"export {CKPT} {W}/exported", "only peft's tuners"),
    C(f"export {LORA} {W}/img", "holds other files"),
    C("export adapter.safetensors .", "holds other files", cwd="lora"),
    C(f"export {LORA} {LORA}", "is one of the inputs"),
    C(f"export {LORA} {W}/lora", "holds other files"),
    C(f"export {LORA} --out {W}/peft_user --overwrite", "holds other files (base/mine, base/notes.txt)"),
    C(f"export {LORA} --out {W}/peft_foreign --overwrite", "but no adapt.json: not an export of adapt's"),
    C(f"import-peft {W}/img --out {W}/x.safetensors", "not a peft adapter folder"),
    C(f"import-peft {W}/nope --out {W}/x.safetensors", "not a peft adapter folder"),
    C(f"import-peft {W}/img --out {CKPT}", "exists; pass --overwrite"),
    C(f"import-peft {W}/peftbad --out {W}/x.safetensors", "is not a peft config"),
    C(f"tune --backbone test_vit --weights random --image-size 33 --limit 8 --out {W}/out", "not a multiple of"),
    # compare: run folders whose summary.json is not one adapt wrote
    C(f"compare {W}/ssf {W}/nope", "is not a folder"),
    C(f"compare {W}/img", "holds no summary.json, nor subfolders with one"),
    C(f"compare {W}/runs/notjson", "is not JSON"),
    C(f"compare {W}/runs/list", "it holds a list"),
    C(f"compare {W}/runs/acc_text", "test_acc is 'x', not a number"),
    C(f"compare {W}/runs/acc_nan", "test_acc is nan, not a number"),
    C(f"compare {W}/runs/acc_negative", "test_acc is -1, not a number >= 0"),
    C(f"compare {W}/runs/no_counts", "trainable_params is None, not a number"),
    C(f"compare {W}/runs/counts_swapped", "trainable_params 9 exceed total_params 2"),
    C(f"compare {W}/runs/latin1", "is not UTF-8 text"),
    C(f"compare {W}/runs", "is not a run summary adapt wrote"),  # a folder of runs: each must be whole
    C(f"compare {W}/ssf --plot {W}/ssf/summary.json", "is one of the inputs"),
    C(f"compare {W}/ssf --plot {W}/img/good.png", "exists; pass --overwrite"),
    C(f"compare {W}/ssf --plot {W}/img", "is a folder; give a file name"),
    C("compare", "Missing argument 'RUNS...'", 2),
    # soups: coefficients, recipes, YAML configs, ingredients
    C(f"soup {SOUP}/a.safetensors --out {W}/s.safetensors", "at least two ingredients"),
    C(f"soup --out {W}/s.safetensors", "name the ingredients"),
    C(f"soup {SOUP}/a.safetensors {SOUP}/b.safetensors", "say where to write the soup"),
    C(f"soup {SOUP}/a.safetensors {SOUP}/b.safetensors --out {SOUP}/a.safetensors", "is one of the inputs"),
    C(f"soup {SOUP}/a.safetensors {SOUP}/b.safetensors --recipe ties --base {SOUP}/base.safetensors "
      f"--out {SOUP}/base.safetensors", "is one of the inputs"),
    C(f"soup {SOUP}/a.safetensors {SOUP}/b.safetensors --coeffs -1,2 --out {W}/s.safetensors", "must be >= 0"),
    C(f"soup {SOUP}/a.safetensors {SOUP}/b.safetensors --coeffs 0,0 --out {W}/s.safetensors", "positive sum"),
    C(f"soup {SOUP}/a.safetensors {SOUP}/b.safetensors --coeffs nan,1 --out {W}/s.safetensors", "finite"),
    C(f"soup {SOUP}/a.safetensors {SOUP}/b.safetensors --coeffs 1,-1 --allow-negative --out {W}/s.safetensors",
      "must not sum to zero"),
    C(f"soup {SOUP}/a.safetensors {SOUP}/b.safetensors --coeffs 1 --out {W}/s.safetensors", "1 coefficients for 2"),
    C(f"soup {SOUP}/a.safetensors {SOUP}/b.safetensors --coeffs x,y --out {W}/s.safetensors", "expects numbers"),
    C(f"soup {SOUP}/a.safetensors {SOUP}/b.safetensors --coeffs 1,1 --recipe ties --base {SOUP}/base.safetensors "
      f"--out {W}/s.safetensors", "recipe ties does not use --coeffs"),
    C(f"soup {SOUP}/a.safetensors {SOUP}/b.safetensors --recipe ties --out {W}/s.safetensors", "needs --base"),
    C(f"soup {SOUP}/a.safetensors {SOUP}/b.safetensors --recipe model-stock --out {W}/s.safetensors", "needs --base"),
    C(f"soup {SOUP}/a.safetensors {SOUP}/b.safetensors --recipe wise-ft --base {SOUP}/base.safetensors "
      f"--out {W}/s.safetensors", "interpolates one fine-tune with its --base; got 2"),
    C(f"soup {SOUP}/a.safetensors {SOUP}/b.safetensors {SOUP}/a.safetensors --recipe slerp --out {W}/s.safetensors",
      "interpolates two ingredients; got 3"),
    C(f"soup {SOUP}/a.safetensors --recipe model-stock --base {SOUP}/base.safetensors --out {W}/s.safetensors",
      "needs at least two fine-tunes"),
    C(f"soup {SOUP}/a.safetensors {SOUP}/b.safetensors --recipe slerp --base {SOUP}/base.safetensors "
      f"--out {W}/s.safetensors", "recipe slerp takes no --base; it is for task-arithmetic, ties, dare, wise-ft, model-stock"),
    C(f"soup {SOUP}/a.safetensors {SOUP}/b.safetensors --recipe slerp --scale auto --out {W}/s.safetensors",
      "--scale auto chooses on held-out data"),
    C(f"soup {SOUP}/a.safetensors {SOUP}/b.safetensors --recipe fisher --out {W}/s.safetensors",
      "recipe fisher estimates each ingredient's Fisher on its own data: pass --data"),
    C(f"soup {SOUP}/a.safetensors {SOUP}/b.safetensors --recipe fisher --data digits --data digits --data digits "
      f"--out {W}/s.safetensors", "3 --data for 2 ingredients"),
    C(f"soup {SOUP}/a.safetensors {SOUP}/b.safetensors --recipe greedy --data digits --data digits "
      f"--out {W}/s.safetensors", "several --data are for recipe fisher"),
    C(f"soup {SOUP}/a.safetensors {SOUP}/b.safetensors --examples 8 --out {W}/s.safetensors",
      "recipe uniform does not use --examples"),
    C(f"soup {SOUP}/a.safetensors {SOUP}/b.safetensors --recipe fisher --floor 0 --data digits "
      f"--out {W}/s.safetensors", "floor must be > 0"),
    C(f"soup {SOUP}/a.safetensors {SOUP}/b.safetensors --recipe fisher --examples 0 --data digits "
      f"--out {W}/s.safetensors", "Invalid value for '--examples'", code=2),
    C(f"soup {SOUP}/a.safetensors {SOUP}/b.safetensors --base {SOUP}/base.safetensors --out {W}/s.safetensors",
      "takes no --base; it is for task-arithmetic"),
    C(f"soup {SOUP}/a.safetensors {SOUP}/b.safetensors --recipe task-arithmetic --base {SOUP}/base.safetensors "
      f"--scale nan --out {W}/s.safetensors", "scale must be finite"),
    C(f"soup {SOUP}/a.safetensors {SOUP}/b.safetensors --recipe task-arithmetic --base {SOUP}/base.safetensors "
      f"--scale inf --out {W}/s.safetensors", "scale must be finite"),
    C(f"soup {SOUP}/a.safetensors {SOUP}/b.safetensors --recipe dare --base {SOUP}/base.safetensors --drop nan "
      f"--out {W}/s.safetensors", "drop must be finite"),
    C(f"soup {SOUP}/a.safetensors {SOUP}/b.safetensors --drop 1.0 --out {W}/s.safetensors", "recipe uniform does not use --drop"),
    C(f"soup {SOUP}/a.safetensors {SOUP}/b.safetensors --recipe dare --base {SOUP}/base.safetensors --drop 1.0 "
      f"--out {W}/s.safetensors", "drop must be < 1"),
    C(f"soup {SOUP}/a.safetensors {SOUP}/b.safetensors --recipe dare --base {SOUP}/base.safetensors --drop 0.1,1.5 "
      f"--out {W}/s.safetensors", "drop rates must be in [0, 1)"),
    C(f"soup {SOUP}/a.safetensors {SOUP}/b.safetensors --recipe dare --base {SOUP}/base.safetensors --drop 0.1,x "
      f"--out {W}/s.safetensors", "--drop expects numbers separated by commas"),
    C(f"soup {SOUP}/a.safetensors {SOUP}/b.safetensors --recipe dare --base {SOUP}/base.safetensors --drop 0.1,0.1 "
      f"--out {W}/s.safetensors", "--drop expects distinct numbers"),
    C(f"soup {SOUP}/a.safetensors {SOUP}/b.safetensors --recipe dare --base {SOUP}/base.safetensors --drop 0.1,0.5 "
      f"--out {W}/s.safetensors", "--drop with several rates chooses on held-out data"),
    C(f"soup {SOUP}/a.safetensors {SOUP}/b.safetensors --density 0 --out {W}/s.safetensors",
      "Invalid value for '--density'", 2),
    C(f"soup {SOUP}/a.safetensors {SOUP}/b.safetensors --base {SOUP}/base.safetensors --config {SOUP}/density.yaml "
      f"--out {W}/s.safetensors", "density must be <= 1"),
    C(f"soup {SOUP}/a.safetensors {SOUP}/b.safetensors --base {SOUP}/base.safetensors --config {SOUP}/drop.yaml "
      f"--out {W}/s.safetensors", "drop must be < 1"),
    C(f"soup {SOUP}/a.safetensors {SOUP}/b.safetensors --config {SOUP}/dtype.yaml --out {W}/s.safetensors",
      "dtype must be one of"),
    C(f"soup {SOUP}/a.safetensors {SOUP}/b.safetensors --config {SOUP}/unknown.yaml --out {W}/s.safetensors",
      "did you mean 'recipe'"),
    C(f"soup {SOUP}/a.safetensors {SOUP}/b.safetensors --config {SOUP}/list.yaml --out {W}/s.safetensors",
      "must be a mapping"),
    C(f"soup {SOUP}/a.safetensors {SOUP}/b.safetensors --config {SOUP}/broken.yaml --out {W}/s.safetensors",
      "cannot read config"),
    C(f"soup {SOUP}/a.safetensors {SOUP}/b.safetensors --config {SOUP}/latin1.yaml", "is not UTF-8 text"),
    C(f"soup {SOUP}/a.safetensors {SOUP}/b.safetensors --config {SOUP}/none.yaml --out {W}/s.safetensors",
      "none.yaml not found"),
    C(f"soup {SOUP}/a.safetensors {SOUP}/b.safetensors --config {SOUP} --out {W}/s.safetensors", "is not a regular file"),
    C(f"soup {SOUP}/a.safetensors {SOUP}/shape.safetensors --out {W}/s.safetensors", "has shape"),
    C(f"soup {SOUP}/a.safetensors {SOUP}/int.safetensors --out {W}/s.safetensors", "has dtype"),
    C(f"soup {SOUP}/a.safetensors {SOUP}/nan.safetensors --out {W}/s.safetensors", "NaN or Inf"),
    C(f"soup {SOUP}/u16.safetensors {SOUP}/u16b.safetensors --out {W}/s.safetensors", "which soups do not handle"),
    C(f"soup {SOUP}/big.safetensors {SOUP}/big2.safetensors --dtype float16 --out {W}/s.safetensors", "overflows"),
    C(f"soup {SOUP}/a.safetensors {SOUP}/b.safetensors --recipe greedy --out {W}/s.safetensors", "chooses on held-out data"),
    C(f"soup {SOUP}/a.safetensors {SOUP}/b.safetensors --recipe greedy --data digits --density 0.3 --out {W}/s.safetensors",
      "does not use --density"),
    C(f"soup {SOUP}/a.safetensors {SOUP}/b.safetensors --greedy --out {W}/s.safetensors", "--recipe greedy"),
    C(f"soup {SOUP}/a.safetensors {SOUP}/b.safetensors --weights 1,2 --out {W}/s.safetensors", "now --coeffs"),
    C(f"soup {SOUP}/a.safetensors {SOUP}/b.safetensors --scale 0.5 --out {W}/s.safetensors", "does not use --scale"),
    C(f"soup {SOUP}/a.safetensors {SOUP}/b.safetensors --recipe ties --base {SOUP}/base.safetensors --scale x "
      f"--out {W}/s.safetensors", "is a number or auto"),
    C(f"soup {SOUP}/a.safetensors {SOUP}/b.safetensors --recipe ties --base {SOUP}/base.safetensors --scale auto "
      f"--out {W}/s.safetensors", "chooses on held-out data"),
    C(f"soup {SOUP}/a.safetensors {SOUP}/b.safetensors --recipe ties --base {SOUP}/base.safetensors --scale-grid 1,x "
      f"--data digits --out {W}/s.safetensors", "--scale-grid expects numbers"),
    C(f"soup {SOUP}/a.safetensors {SOUP}/b.safetensors --recipe ties --base {SOUP}/base.safetensors --scale-grid 1,1 "
      f"--data digits --out {W}/s.safetensors", "distinct numbers"),
    C(f"soup {SOUP}/a.safetensors {SOUP}/b.safetensors --recipe ties --base {SOUP}/base.safetensors --scale-grid 1,2 "
      f"--scale 0.5 --data digits --out {W}/s.safetensors", "drop the fixed scale"),
    C(f"soup {SOUP}/a.safetensors {SOUP}/b.safetensors --scale-grid 1,2 --out {W}/s.safetensors", "does not use --scale-grid"),
    C(f"soup {SOUP}/a.safetensors {SOUP}/b.safetensors --rank 4 --out {W}/s.safetensors", "are not lora"),
    C(f"soup {CKPT} {CKPT} --rank 4 --out {W}/s.safetensors", "are not lora"),
    C(f"soup {CKPT} {CKPT} --recipe ties --base {SOUP}/base.safetensors --out {W}/s.safetensors",
      "adapter ingredients take the pretrained backbone"),
    C(f"soup {SOUP}/a.safetensors {SOUP}/b.safetensors --max-shard-size junk --out {W}/s.safetensors",
      "cannot read size"),
    C(f"soup {SOUP}/a.safetensors {SOUP}/b.safetensors --max-shard-size 0 --out {W}/s.safetensors", "must be positive"),
    C(f"soup {CKPT} {SOUP}/a.safetensors --out {W}/s.safetensors", "soup one kind"),
    C(f"soup {CKPT} {LORA} --out {W}/s.safetensors", "differs"),
    C(f"soup {SOUP}/a.safetensors {SOUP}/none.safetensors --out {W}/s.safetensors", "file not found"),
    # perceptual initialization
    C(f"perceptual-init --data triplets:{W}/trip/latin1.csv --out {W}/p.safetensors", "is not UTF-8 text"),
    C(f"perceptual-init --data triplets:{W}/trip/missingcol.csv --out {W}/p.safetensors", "lacks column"),
    C(f"perceptual-init --data triplets:{W}/trip/badchoice.csv --out {W}/p.safetensors", "choice must be"),
    C(f"perceptual-init --data triplets:{W}/trip/noimage.csv --out {W}/p.safetensors", "image not found"),
    C(f"perceptual-init --data triplets:{W}/trip/noimage.csv --backbone test_vit --from pretrained --out {W}/p.safetensors",
      "has no pretrained weights here"),
    C(f"perceptual-init --data triplets:{W}/trip/noimage.csv --method lora --rank 0 --out {W}/p.safetensors",
      "method lora: rank must be >= 1"),
    C(f"perceptual-init --data nights:{W}/nope --out {W}/p.safetensors", "triplet file not found"),
    C(f"perceptual-init --data mnist --out {W}/p.safetensors", "unknown triplet data"),
    C(f"perceptual-init --data triplets:{W}/trip/badchoice.csv --lr nan --out {W}/p.safetensors", "lr must be finite"),
    C(f"perceptual-init --data triplets:{W}/trip/good.csv --norm-statistics train --out {W}/p.safetensors",
      "Invalid value for '--norm-statistics'", 2),
    C(f"perceptual-init --data triplets:{W}/trip/badchoice.csv --out {CKPT}", "exists; pass --overwrite"),
    C(f"perceptual-init --data triplets:{W}/trip/good.csv --from {W}/none.safetensors --out {W}/p.safetensors",
      "none.safetensors"),
    C(f"perceptual-init --data triplets:{W}/trip/good.csv --from embedded --backbone vit_tiny_patch16_224 "
      f"--out {W}/p.safetensors", "embedded weights exist only for"),
    C(f"perceptual-init --data triplets:{W}/trip/good.csv --from {CKPT} --out {CKPT}", "is one of the inputs"),
    # continual learning
    C(f"continual --template nobraces {T}", "must contain {}"),
    C(f"continual --template {{}}{{}} {T}", "must contain {}"),
    C(f"continual --template {{0}}x{{1}} {T}", "must contain {}"),
    C(f"continual --text-model {W}/nope {T}", "no sentence-transformers text model"),
    C(f"continual --method hst {T}", "Invalid value for '--method'", 2),
    C(f"continual --initial 11 {T}", "need 1 <= --initial <= 10"),
    C(f"continual --lr nan {T}", "lr must be finite"),
    C(f"continual --seed -3 {T}", "seed must be >= 0"),
    C(f"continual --learner ewc {T}", "Invalid value for '--learner'", 2),
    C(f"continual --learner lwf --memory 20 {T}", "learner lwf: unknown option 'memory'"),
    C(f"continual --learner naive --selection random {T}", "learner naive: unknown option 'selection'"),
    C(f"continual --learner icarl --learner-option classifier {T}", "--learner-option expects key=value"),
    C(f"continual --learner icarl --learner-option classifier=knn {T}", "classifier must be one of"),
    C(f"continual --learner lwf --learner-option temperature=-1 {T}", "temperature must be > 0"),
    C(f"continual --learner prototype --head cosine {T}", "use --method linear"),
    C(f"continual --learner icarl --memory 9 {T}", "a memory of 9 exemplars cannot keep one of each of the 10 classes"),
    C(f"continual --memory 3 {T}", "use --memory 10 or more"),
    # SPT's two steps
    C(f"allocate {SOUP}/a.safetensors --budget 1% --out {W}/al.json", "not a sensitivity file"),
    C(f"allocate {W}/sens.safetensors --budget abc --out {W}/al.json", "cannot read budget"),
    C(f"allocate {W}/sens.safetensors --budget 10M --out {W}/al.json", "larger than the"),
    C(f"allocate {W}/sens.safetensors --budget 0 --out {W}/al.json", "is zero"),
    C(f"allocate {W}/sens.safetensors --budget 1% --rule closest --out {W}/al.json", "Invalid value for '--rule'", 2),
    C(f"allocate {W}/sens.safetensors --budget 1% --out {W}/sens.safetensors", "is one of the inputs"),
    C(f"allocate {W}/sens.safetensors --budget 1% --out {W}/al.json --plot {W}/sens.safetensors", "is one of the inputs"),
    C(f"sensitivity --image-size 32 --out {CKPT}", "exists; pass --overwrite"),
    C("methods --backbone nope", "unknown backbone"),
    # no silent wrong number: conflicts, user-worded types, broken weights, class order
    C(f"tune --method lora --rank 4 --option rank=8 {T}", "given twice with different values: --rank 4 and --option rank=8"),
    C(f"tune --method lora --option rank=8 --rank 4 {T}", "given twice with different values"),
    C(f"tune --method spt --budget 0.4 {T}", "budget takes a count such as 400000, or text such as 0.4M"),
    C(f"tune --config {W}/lr_list.yaml {T}", "lr takes one number, got a list"),
    C(f"tune --config {W}/seed_map.yaml {T}", "seed takes one whole number, got a mapping"),
    C(f"continual --config {W}/lr_list.yaml {T}", "lr takes one number, got a list"),
    C(f"perceptual-init --data triplets:x.csv --config {W}/seed_map.yaml --out {W}/p.safetensors", "seed takes one whole"),
    C(f"tune --backbone local-dir:{W}/hugehub {T}", "the image size must be 16 to 1024 px"),
    C(f"tune --method spt --allocation {CKPT} {T}", "is a safetensors tensor file, not an allocation JSON"),
    C(f"allocate {W}/sens.safetensors --budget 1% --out {W}/al.json --plot {W}/img", "--plot"),
    C(f"eval {W}/meta/negvar.safetensors --limit 8", "computes NaN/Inf outputs"),
    C(f"predict {W}/meta/negvar.safetensors {W}/img/good.png", "computes NaN/Inf outputs"),
    C(f"soup {CKPT} {W}/meta/permuted.safetensors --out {W}/s.safetensors", "the same classes in another order"),
    C(f"perceptual-init --data nights:{W}/nights_neg --out {W}/p.safetensors", "row 2: votes must be finite and >= 0"),
    C(f"perceptual-init --out {W}/p.safetensors", "Missing option '--data'", 2),
    C(f"continual --head linear --precision fp16 {T}", "fp16 needs a GPU"),
    C(f"continual --head linear --log-with tensorbord {T}", "'tensorbord' is not a tracker"),
    C(f"continual --head linear --workers -1 {T}", "Invalid value for '--workers'", 2),
    C(f"export {LORA}", "Missing option '--out'", 2),
    C(f"export {LORA} {W}/e1 --out {W}/e2", "give the folder once"),
    C(f"export {LORA} --format hub --out {W}/lora", "holds other files"),
    C(f"export {LORA} --format zip --out {W}/e", "Invalid value for '--format'", 2),
    C(f"export {CKPT} --out {W}/exported", "only peft's tuners"),
    C(f"import-peft {W}/peft_r --out {W}/x.safetensors", "says r=4, but its tensors have rank 2"),
    C("nothing", "No such command", 2),
]


def tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def assert_one_line(result, phrase: str, code: int) -> None:
    assert result.exit_code == code, (result.exit_code, result.output)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert phrase in lines[0], (phrase, lines[0])
    assert "Traceback" not in result.output and result.exception is None or isinstance(result.exception, SystemExit)


@pytest.mark.parametrize("args, phrase, code, cwd", CASES, ids=[c[0][:60] for c in CASES])
def test_bad_input(world, args, phrase, code, cwd):
    before = tree(world)
    result = invoke(args.replace(W, str(world)).split(), cwd=world / cwd if cwd else None)
    assert_one_line(result, phrase, code)
    assert tree(world) == before
    assert not [p for p in world.rglob("*") if p.name.endswith((".tmp", ".lock"))]


def test_the_table_is_large():
    assert len(CASES) >= 100


def test_a_decompression_bomb_is_one_line(world, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # the 32x32 digit is then "too large" by PIL's rule
    result = invoke(["predict", world / "ssf" / "adapter.safetensors", world / "img" / "good.png"])
    assert_one_line(result, "decompression bomb", 1)


def run_adapt(args: list, timeout: float = 120, limit_bytes: int | None = None) -> subprocess.CompletedProcess:
    def limit() -> None:
        if limit_bytes is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    return subprocess.run([sys.executable, "-m", "adapt", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, preexec_fn=limit)  # fmt: skip


def assert_one_line_process(result: subprocess.CompletedProcess, phrase: str) -> None:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1 and len(lines) == 1 and phrase in lines[0], result.stderr[-2000:]


def test_a_fifo_named_like_an_image_does_not_hang(world, tmp_path):
    fifo = tmp_path / "fifo.png"
    os.mkfifo(fifo)
    assert_one_line_process(run_adapt(["predict", world / "ssf" / "adapter.safetensors", fifo], timeout=90),
                            "not a regular file")  # fmt: skip
    task = tmp_path / "task"
    vtab_task(task, [b"images/fifo.png 0"])
    os.mkfifo(task / "images" / "fifo.png")
    assert_one_line_process(run_adapt(["tune", "--data", f"vtab:{task}", *QUICK, "--out", tmp_path / "o"], timeout=90),
                            "not a regular file")  # fmt: skip


def test_a_fifo_as_a_config_or_allocation_does_not_hang(world, tmp_path):
    fifo = tmp_path / "config.yaml"
    os.mkfifo(fifo)
    soup = world / "soup"
    assert_one_line_process(run_adapt(["soup", soup / "a.safetensors", soup / "b.safetensors", "--config", fifo,
                                       "--out", tmp_path / "s.safetensors"], timeout=90), "is not a regular file")  # fmt: skip
    assert_one_line_process(run_adapt(["tune", "--method", "spt", "--allocation", fifo, *QUICK, "--out", tmp_path / "o"],
                                      timeout=90), "is not a regular file")  # fmt: skip


def test_a_full_disk_leaves_the_old_output_whole(world, tmp_path):
    out = tmp_path / "merged.safetensors"
    out.write_bytes(b"the user's earlier merge")
    result = run_adapt(["merge", world / "ssf" / "adapter.safetensors", "--out", out, "--overwrite"], limit_bytes=2**20)
    assert_one_line_process(result, "File too large")
    assert out.read_bytes() == b"the user's earlier merge"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged.safetensors"]


def mounted_tmpfs(folder: Path, options: str):
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small file system here: {mounted.stderr.decode().strip()}")
    return folder


@pytest.fixture
def read_only_folder(tmp_path):
    yield mounted_tmpfs(tmp_path / "ro", "ro,size=1m")
    subprocess.run(["umount", str(tmp_path / "ro")], check=True)


@pytest.fixture
def small_disk(tmp_path):
    yield mounted_tmpfs(tmp_path / "small", "size=1m")
    subprocess.run(["umount", str(tmp_path / "small")], check=True)


def test_a_disk_without_room_is_refused_before_writing(world, small_disk):
    result = invoke(["merge", world / "ssf" / "adapter.safetensors", "--out", small_disk / "m.safetensors"])
    assert_one_line(result, "not enough space", 1)
    assert not list(small_disk.iterdir())


def test_a_read_only_folder_is_one_line(world, read_only_folder):
    result = invoke(["merge", world / "ssf" / "adapter.safetensors", "--out", read_only_folder / "m.safetensors"])
    assert_one_line(result, "Read-only file system", 1)
    result = invoke(["tune", *QUICK, "--out", read_only_folder / "run"])
    assert_one_line(result, "Read-only file system", 1)
    assert not list(read_only_folder.iterdir())


@pytest.mark.parametrize("error, code, phrase", [
    (MemoryError(), 1, "out of memory"),
    (KeyboardInterrupt(), 130, "interrupted"),
    (OSError(28, "No space left on device", "/data/out.safetensors"), 1, "No space left on device: /data/out.safetensors"),
    (OSError(30, "Read-only file system", "/ro/x"), 1, "Read-only file system"),
])  # fmt: skip
def test_the_top_level_handler_turns_situations_into_one_line(error, code, phrase):
    from adapt.cli.common import AdaptGroup

    group = AdaptGroup()

    @group.command()
    def boom() -> None:
        raise error

    result = CliRunner().invoke(group, ["boom"])
    interrupted = isinstance(error, KeyboardInterrupt)  # the user's own doing, not an error
    assert result.exit_code == code and result.stderr.startswith("interrupted" if interrupted else "error: ")
    assert phrase in result.stderr and result.stderr.count("\n") == 1


def test_ctrl_c_in_tune_says_how_to_continue(tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("adapt.tuning.tune", interrupted)
    result = invoke(["tune", *QUICK, "--out", tmp_path / "my run"])
    assert result.exit_code == 130 and result.stderr.count("\n") == 1
    assert result.stderr.strip().endswith(f"Continue with: adapt tune --out '{tmp_path / 'my run'}' --resume")


def test_a_bug_keeps_its_traceback_and_asks_to_be_reported():
    from adapt.cli.common import AdaptGroup

    group = AdaptGroup()

    @group.command()
    def boom() -> None:
        raise RuntimeError("a bug")

    result = CliRunner().invoke(group, ["boom"])
    assert result.exit_code == 1 and isinstance(result.exception, RuntimeError)
    assert "please report it" in result.stderr
