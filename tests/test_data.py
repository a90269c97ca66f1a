import shutil

import pytest
import torch

from adapt import AdaptError
from adapt.data import DIGITS_IMAGE_SIZE, expand_spec, load_data
from adapt.data.vtab import vtab_means

MEAN = STD = (0.5, 0.5, 0.5)


def test_digits_split_is_fixed_stratified_and_disjoint():
    data = load_data("digits", 32, MEAN, STD)
    sizes = (len(data.train), len(data.val), len(data.test))
    assert sizes == (1078, 359, 360) and sum(sizes) == 1797
    assert data.class_names[0] == "zero" and data.num_classes == 10
    image, _ = data.train[0]
    assert image.shape == (3, 32, 32) and -1.0 <= float(image.min()) and float(image.max()) <= 1.0
    for split in (data.train, data.val, data.test):  # stratified: every class in every split
        assert set(split.targets) == set(range(10))
    keys = [{tuple(split.images[i].flatten()[::7].tolist()) for i in range(len(split))} for split in (data.train, data.test)]
    assert len(keys[0] & keys[1]) < 5  # (a few digits are pixel-identical in sklearn's set)
    again = load_data("digits", 32, MEAN, STD)
    assert torch.equal(again.test.images, data.test.images)
    assert DIGITS_IMAGE_SIZE == 96


def test_folder_layout(folder_root):
    data = load_data(f"folder:{folder_root}", 32, MEAN, STD)
    assert data.class_names == ["one", "two", "zero"]
    assert (len(data.train), len(data.val), len(data.test)) == (48, 18, 24)
    image, label = data.test[0]
    assert image.shape == (3, 32, 32) and 0 <= label < 3


def test_vtab_protocols_and_task_expansion(vtab_root):
    final = load_data(f"vtab:{vtab_root / 'svhn'}", 32, MEAN, STD)
    assert (len(final.train), len(final.test), len(final.val)) == (60, 40, 20)  # val200, inside train800val200
    assert final.val_in_train and final.held_out_val is None  # so it scores no training epoch
    assert final.num_classes == 10 and final.test_name == "test"
    tune = load_data(f"vtab:{vtab_root / 'svhn'}", 32, MEAN, STD, split_protocol="tune")
    assert (len(tune.train), len(tune.test), tune.test_name, tune.val) == (40, 20, "val200", None)
    assert [s.rsplit("/", 1)[-1] for s in expand_spec(f"vtab:{vtab_root}")] == ["svhn", "eurosat"]


def test_vtab_means_report_plain_and_group_mean():
    accs = {"cifar": 0.9, "dtd": 0.7, "eurosat": 0.95, "dmlab": 0.5, "kitti": 0.7}
    means = vtab_means(accs)
    assert means["plain_mean"] == pytest.approx(3.75 / 5)
    assert means["natural"] == pytest.approx(0.8) and means["specialized"] == pytest.approx(0.95)
    assert means["structured"] == pytest.approx(0.6)
    assert means["group_mean"] == pytest.approx((0.8 + 0.95 + 0.6) / 3)
    assert vtab_means({"cifar": 0.5})["group_mean"] is None


def _broken_copy(vtab_root, tmp_path):
    task = tmp_path / "svhn"
    shutil.copytree(vtab_root / "svhn", task)
    return task


def test_bad_inputs_name_the_file(vtab_root, tmp_path):
    with pytest.raises(AdaptError, match="VTAB folder not found"):
        load_data(f"vtab:{tmp_path / 'nope'}", 32, MEAN, STD)
    with pytest.raises(AdaptError, match="data folder not found"):
        load_data(f"folder:{tmp_path / 'nope'}", 32, MEAN, STD)
    with pytest.raises(AdaptError, match="unknown data spec"):
        load_data("imagenet", 32, MEAN, STD)

    task = _broken_copy(vtab_root, tmp_path)
    (task / "test.txt").write_text("")
    with pytest.raises(AdaptError, match=f"empty split: {task / 'test.txt'}"):
        load_data(f"vtab:{task}", 32, MEAN, STD)

    lines = (vtab_root / "svhn" / "test.txt").read_text().splitlines()
    (task / "test.txt").write_text("\n".join([lines[0].rsplit(" ", 1)[0] + " 10"] + lines[1:]))
    with pytest.raises(AdaptError, match="label 10 of .* is out of range 0..9"):
        load_data(f"vtab:{task}", 32, MEAN, STD)

    (task / "test.txt").write_text("\n".join(lines))
    victim = task / lines[3].split()[0]
    victim.write_bytes(b"garbage")
    with pytest.raises(AdaptError, match=f"unreadable image {victim}"):
        load_data(f"vtab:{task}", 32, MEAN, STD)

    victim.unlink()
    with pytest.raises(AdaptError, match=f"image not found: {victim}"):
        load_data(f"vtab:{task}", 32, MEAN, STD)

    (task / "test.txt").write_text("just-one-field\n")
    with pytest.raises(AdaptError, match="test.txt:1: expected"):
        load_data(f"vtab:{task}", 32, MEAN, STD)


def test_folder_without_test_split_holds_out_a_stratified_seeded_fifth(folder_root, tmp_path):
    shutil.copytree(folder_root / "train", tmp_path / "train")  # 3 classes of 16 images
    splits = load_data(f"folder:{tmp_path}", 32, MEAN, STD, seed=0)
    train, test = splits.train.items, splits.test.items
    assert "no test/" in splits.note and len(test) == 3 * round(0.2 * 16) and len(train) == 3 * 16 - len(test)
    assert not {p for p, _ in train} & {p for p, _ in test}
    assert sorted(label for _, label in test) == [0] * 3 + [1] * 3 + [2] * 3
    assert load_data(f"folder:{tmp_path}", 32, MEAN, STD, seed=0).test.items == test  # seeded
    assert load_data(f"folder:{tmp_path}", 32, MEAN, STD, seed=1).test.items != test
    shutil.rmtree(tmp_path / "train")
    (tmp_path / "test").mkdir()
    with pytest.raises(AdaptError, match="has no train/ subfolder"):
        load_data(f"folder:{tmp_path}", 32, MEAN, STD)


def test_augmentation_is_on_for_folders_off_for_vtab_and_refused_for_digits(folder_root, vtab_root):
    def kinds(dataset):
        return {type(t).__name__ for t in dataset.transform.transforms}

    folder = load_data(f"folder:{folder_root}", 32, MEAN, STD)
    assert "RandomResizedCropAndInterpolation" in kinds(folder.train) and "RandomHorizontalFlip" in kinds(folder.train)
    assert "RandomResizedCropAndInterpolation" not in kinds(folder.test)  # evaluation never augments
    policy = load_data(f"folder:{folder_root}", 32, MEAN, STD, augment="rand-m9-mstd0.5")
    assert "RandAugment" in kinds(policy.train)
    vtab = load_data(f"vtab:{vtab_root / 'svhn'}", 32, MEAN, STD)
    assert kinds(vtab.train) == kinds(vtab.test)  # the VTAB-1k protocol: no augmentation by default
    assert "RandomHorizontalFlip" in kinds(load_data(f"vtab:{vtab_root / 'svhn'}", 32, MEAN, STD, augment="on").train)
    with pytest.raises(AdaptError, match="digits are 8x8 drawings"):
        load_data("digits", 32, MEAN, STD, augment="on")
    with pytest.raises(AdaptError, match="not on, off or a timm auto-augment policy"):
        load_data(f"folder:{folder_root}", 32, MEAN, STD, augment="sideways")


def test_text_inputs_saved_with_a_byte_order_mark_read_as_utf8(vtab_root, tmp_path):
    """Excel's "CSV UTF-8" starts files with a BOM: VTAB lists and triplet CSVs read the same with or without it."""
    import shutil

    from adapt.data.triplets import load_triplets

    task = tmp_path / "svhn"
    shutil.copytree(vtab_root / "svhn", task)
    for name in ("train800val200.txt", "test.txt"):
        (task / name).write_bytes(b"\xef\xbb\xbf" + (task / name).read_bytes())
    with_bom = load_data(f"vtab:{task}", 32, MEAN, STD)
    plain = load_data(f"vtab:{vtab_root / 'svhn'}", 32, MEAN, STD)
    assert [label for _, label in with_bom.test.items] == [label for _, label in plain.test.items]
    (tmp_path / "r.png").write_bytes((task / with_bom.test.items[0][0].relative_to(task)).read_bytes())
    (tmp_path / "t.csv").write_bytes(b"\xef\xbb\xbfref,a,b,choice\nr.png,r.png,r.png,a\n")
    assert len(load_triplets(f"triplets:{tmp_path / 't.csv'}")["train"]) == 1
