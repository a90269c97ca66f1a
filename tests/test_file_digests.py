"""Input digests: exact sha256, computed beside the soup, remembered until the file changes."""

import hashlib
import json
import os

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import adapt.file_digests as file_digests
from adapt.file_digests import PLACEHOLDER, FileDigests, file_records
from adapt.merging.soup import stream_soup
from adapt.merging.tensors import StreamingWriter


@pytest.fixture
def counted_hashing(monkeypatch, tmp_path):
    """Every file actually hashed (not read from the cache), in a cache folder of the test's own."""
    monkeypatch.setenv("ADAPT_CACHE_DIR", str(tmp_path / "cache"))
    hashed = []
    real = file_digests._sha256

    def counting(path):
        hashed.append(path.name)
        return real(path)

    monkeypatch.setattr(file_digests, "_sha256", counting)
    return hashed


def _files(tmp_path, count=3):
    paths = []
    for i in range(count):
        paths.append(tmp_path / f"f{i}.bin")
        paths[-1].write_bytes(os.urandom(1000 + i))
    return paths


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_records_are_the_sha256_of_each_file_as_given(tmp_path, counted_hashing):
    paths = [*_files(tmp_path), tmp_path / "empty.bin"]
    paths[-1].write_bytes(b"")
    assert file_records(paths) == [{"path": str(p), "sha256": _sha(p)} for p in paths]
    assert file_records([os.path.relpath(paths[0])]) == [{"path": os.path.relpath(paths[0]), "sha256": _sha(paths[0])}]


def test_a_digest_is_remembered_until_the_file_changes(tmp_path, counted_hashing):
    paths = _files(tmp_path)
    first = file_records(paths)
    assert sorted(counted_hashing) == ["f0.bin", "f1.bin", "f2.bin"]
    assert file_records(paths) == first and len(counted_hashing) == 3  # nothing hashed again
    # same size, same mtime, new bytes: the ctime changes, so the file is hashed again
    stat = paths[1].stat()
    paths[1].write_bytes(os.urandom(stat.st_size))
    os.utime(paths[1], ns=(stat.st_atime_ns, stat.st_mtime_ns))
    again = file_records(paths)
    assert again[1]["sha256"] == _sha(paths[1]) != first[1]["sha256"] and counted_hashing[3:] == ["f1.bin"]
    # replaced under the same name (a new inode)
    replacement = tmp_path / "new.bin"
    replacement.write_bytes(os.urandom(1000))
    os.replace(replacement, paths[0])
    assert file_records(paths)[0]["sha256"] == _sha(paths[0]) and counted_hashing[4:] == ["f0.bin"]


def test_an_unusable_cache_folder_only_costs_time(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("ADAPT_CACHE_DIR", str(blocker / "cache"))
    paths = _files(tmp_path, 2)
    assert file_records(paths) == [{"path": str(p), "sha256": _sha(p)} for p in paths]
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / file_digests.CACHE_NAME).write_bytes(b"this is not a database" * 100)
    monkeypatch.setenv("ADAPT_CACHE_DIR", str(corrupt))
    assert file_records(paths) == [{"path": str(p), "sha256": _sha(p)} for p in paths]


def test_placeholders_have_the_records_length(tmp_path, counted_hashing):
    paths = _files(tmp_path)
    with FileDigests(paths) as digests:
        placeholders, records = digests.placeholders(), digests.records()
    assert [len(json.dumps(r)) for r in placeholders] == [len(json.dumps(r)) for r in records]
    assert all(r["sha256"] == PLACEHOLDER for r in placeholders)


def test_restated_header_replaces_the_metadata_in_place(tmp_path):
    tensors = {"a": torch.randn(3, 4), "b": torch.arange(5)}
    order = [(k, tuple(v.shape), v.dtype) for k, v in tensors.items()]
    for shard_bytes in (None, 60):  # one file, and shards with an index
        out = tmp_path / f"out-{shard_bytes}.safetensors"
        with StreamingWriter(out, order, {"digest": PLACEHOLDER}, shard_bytes) as writer:
            for key, tensor in tensors.items():
                writer.write(key, tensor)
            with pytest.raises(ValueError, match="not"):
                writer.restate({"digest": PLACEHOLDER * 2})  # another length is refused
            writer.restate({"digest": "f" * 64})
        for path in writer.shard_paths():
            with safe_open(path, "pt") as handle:
                assert handle.metadata()["digest"] == "f" * 64
        loaded = {k: v for p in writer.shard_paths() for k, v in load_file(p).items()}
        assert all(torch.equal(loaded[k], v) for k, v in tensors.items())
        if shard_bytes:
            index = json.loads(out.with_name(out.name + ".index.json").read_text())
            assert index["metadata"]["digest"] == "f" * 64


def test_a_soup_records_the_true_digests_first_time_and_remembered(tmp_path, counted_hashing):
    g = torch.Generator().manual_seed(0)
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"m{i}.safetensors")
        save_file({"w": torch.randn(64, 64, generator=g), "b": torch.randn(64, generator=g)}, paths[-1])
    expected = [{"path": str(p), "sha256": _sha(p)} for p in paths]
    threads = torch.get_num_threads()
    for attempt in range(2):  # hashed beside the merge, then remembered
        out = tmp_path / f"soup{attempt}.safetensors"
        stream_soup(paths, out)
        with safe_open(out, "pt") as handle:
            assert json.loads(handle.metadata()["soup"])["ingredients"] == expected
        assert (load_file(out)["w"] - sum(load_file(p)["w"] for p in paths) / 3).abs().max() <= 1e-6
    assert sorted(counted_hashing) == ["m0.safetensors", "m1.safetensors", "m2.safetensors"]
    assert torch.get_num_threads() == threads  # the merge's single thread is given back


def test_the_cache_keeps_only_the_most_recent_digests(tmp_path, counted_hashing, monkeypatch):
    monkeypatch.setattr(file_digests, "KEPT", 2)
    paths = _files(tmp_path, 4)
    for path in paths:
        file_records([path])
    file_records(paths[-2:])
    assert len(counted_hashing) == 4  # the two most recent remembered
    file_records(paths[:1])
    assert counted_hashing[4:] == ["f0.bin"]  # an older one was forgotten
