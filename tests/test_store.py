"""Tests of semimer.data.store: the .npy folder layout, packed stores, and their error messages."""

from __future__ import annotations

import os
import re
import shutil

import numpy as np
import pytest

from semimer.data.pack import PackedWriter, pack_folder
from semimer.data.store import NpyFolderStore, PackedStore, open_store


def _names(n):
    return [f"clip_{i:03d}" for i in range(n)]


def write_utt(root, feature, n=13, dim=7, seed=0):
    """``root/features/<feature>/<name>.npy`` of shape (dim,); returns {name: array}."""
    rng = np.random.default_rng(seed)
    folder = root / "features" / feature
    folder.mkdir(parents=True)
    arrays = {}
    for name in _names(n):
        arrays[name] = rng.normal(size=dim).astype(np.float32)
        np.save(folder / f"{name}.npy", arrays[name])
    return arrays


def write_frames(root, feature, n=9, dim=5, seed=1):
    """Ragged frame-level arrays (T_i, dim), T_i between 1 and 11."""
    rng = np.random.default_rng(seed)
    folder = root / "features" / feature
    folder.mkdir(parents=True)
    arrays = {}
    for name in _names(n):
        arrays[name] = rng.normal(size=(int(rng.integers(1, 12)), dim)).astype(np.float32)
        np.save(folder / f"{name}.npy", arrays[name])
    return arrays


# --------------------------------------------------------------------------- same data both ways
def test_utterance_level_folder_and_pack_agree(tmp_path):
    arrays = write_utt(tmp_path, "audio-UTT")
    folder = NpyFolderStore(tmp_path / "features" / "audio-UTT")
    packed = PackedStore(pack_folder(tmp_path / "features" / "audio-UTT", progress=False))
    for store in (folder, packed):
        assert store.level == "utt" and store.dim == 7 and len(store) == 13
        assert sorted(store.names) == sorted(arrays)
        for name, arr in arrays.items():
            got = store.get(name)
            assert got.dtype == np.float32
            np.testing.assert_array_equal(got, arr)
        np.testing.assert_array_equal(store.get_many(list(arrays)), np.stack(list(arrays.values())))
    assert store.get_many([]).shape == (0, 7)


def test_frame_level_folder_and_pack_agree(tmp_path):
    arrays = write_frames(tmp_path, "audio-FRA")
    assert len({a.shape[0] for a in arrays.values()}) > 1  # really ragged
    folder = NpyFolderStore(tmp_path / "features" / "audio-FRA")
    packed = PackedStore(pack_folder(tmp_path / "features" / "audio-FRA", progress=False))
    names = list(arrays)[::-1]
    for store in (folder, packed):
        assert store.level == "frame" and store.dim == 5
        got = store.get_many(names)
        assert isinstance(got, list) and len(got) == len(names)
        for name, g in zip(names, got):
            np.testing.assert_array_equal(g, arrays[name])
    # the packed rows are the clips' frames back to back, in names.json order
    total = sum(a.shape[0] for a in arrays.values())
    assert packed.data.shape == (total, 5)
    lengths = np.diff(packed.offsets)
    assert lengths.tolist() == [arrays[n].shape[0] for n in packed.names]


def test_pack_manifest(tmp_path):
    write_utt(tmp_path, "text-UTT", n=11, dim=6)
    write_frames(tmp_path, "video-FRA", n=4, dim=3)
    out = pack_folder(tmp_path / "features" / "text-UTT", progress=False)
    assert out == tmp_path / "packed" / "text-UTT"
    m = PackedStore(out).manifest
    assert (m["feature"], m["level"], m["dim"], m["count"], m["rows"], m["dtype"]) == ("text-UTT", "utt", 6, 11, 11, "float32")
    fra = PackedStore(pack_folder(tmp_path / "features" / "video-FRA", progress=False))
    frames = sum(np.load(p).shape[0] for p in (tmp_path / "features" / "video-FRA").glob("*.npy"))
    assert (fra.manifest["level"], fra.manifest["dim"], fra.manifest["count"], fra.manifest["rows"]) == ("frame", 3, 4, frames)
    # no temporary folders left behind
    assert sorted(os.listdir(tmp_path / "packed")) == ["text-UTT", "video-FRA"]


def test_repack_replaces_the_old_pack(tmp_path):
    arrays = write_utt(tmp_path, "a-UTT", n=5, dim=3)
    pack_folder(tmp_path / "features" / "a-UTT", progress=False)
    new = np.full(3, 7.0, np.float32)
    np.save(tmp_path / "features" / "a-UTT" / "clip_000.npy", new)
    store = PackedStore(pack_folder(tmp_path / "features" / "a-UTT", progress=False))
    np.testing.assert_array_equal(store.get("clip_000"), new)
    np.testing.assert_array_equal(store.get("clip_004"), arrays["clip_004"])
    assert sorted(os.listdir(tmp_path / "packed")) == ["a-UTT"]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_packed_get_many_follows_the_order_of_names(tmp_path, seed):
    arrays = write_utt(tmp_path, "a-UTT", n=40, dim=4)
    packed = PackedStore(pack_folder(tmp_path / "features" / "a-UTT", progress=False))
    rng = np.random.default_rng(seed)
    names = list(rng.permutation(list(arrays)))
    names += names[:5]  # repeats are allowed and kept in place
    got = packed.get_many(names)
    assert got.shape == (45, 4)
    for i, name in enumerate(names):
        np.testing.assert_array_equal(got[i], arrays[name])


def test_packed_reads_of_frames_in_any_order_with_repeats_and_float16(tmp_path):
    arrays = write_frames(tmp_path, "v-FRA", n=30, dim=6)
    packed = PackedStore(pack_folder(tmp_path / "features" / "v-FRA", progress=False))
    half = PackedStore(pack_folder(tmp_path / "features" / "v-FRA", tmp_path / "half", progress=False, dtype="float16"))
    rng = np.random.default_rng(3)
    names = list(rng.permutation(list(arrays))) + ["clip_004", "clip_004", "clip_005"]
    for store, tol in ((packed, 0), (half, 2e-3)):
        got = store.get_many(names)
        for name, g in zip(names, got):
            assert g.dtype == np.float32
            np.testing.assert_allclose(g, arrays[name], atol=tol * np.abs(arrays[name]).max())
    utt = write_utt(tmp_path, "a-UTT", n=25, dim=3)
    h = PackedStore(pack_folder(tmp_path / "features" / "a-UTT", tmp_path / "half-utt", progress=False, dtype="float16"))
    names = list(utt)[::-1]
    np.testing.assert_allclose(h.get_many(names), np.stack([utt[n] for n in names]), rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(h.get("clip_007"), utt["clip_007"], rtol=1e-3, atol=1e-3)


def test_a_truncated_pack_is_an_error_naming_the_file(tmp_path):
    write_utt(tmp_path, "a-UTT", n=20, dim=8)
    out = pack_folder(tmp_path / "features" / "a-UTT", progress=False)
    f = out / "data.npy"
    opened = PackedStore(out)
    with open(f, "r+b") as fh:  # a copy cut short (the header still says 20 rows)
        fh.truncate(f.stat().st_size - 8 * 4 * 3)
    with pytest.raises(ValueError, match=re.escape(str(f)) + ".*re-run `semimer pack`"):
        PackedStore(out)
    with pytest.raises(ValueError, match=re.escape(str(f)) + ".*shorter than its offsets"):
        opened.get_many(["clip_019", "clip_000"])  # cut short after it was opened
    np.testing.assert_array_equal(opened.get("clip_000"), np.load(tmp_path / "features" / "a-UTT" / "clip_000.npy"))


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads RssFile from /proc (Linux)")
def test_scattered_packed_reads_map_no_file_pages(tmp_path):
    """Gathering scattered rows of a large pack must not count the file as this process's memory:
    through the memory map, fault-around mapped 64 KB around every row touched, so a chunk of random
    clips from a 3 GB pool left ~2.5 GB of file pages resident (issue 13's peak-RSS regression)."""
    def rss_file_mb():
        for line in open("/proc/self/status"):
            if line.startswith("RssFile"):
                return int(line.split()[1]) / 1024
        pytest.skip("no RssFile in /proc/self/status")

    n, dim = 1500, 5120  # 30 MB
    names = [f"c{i:05d}" for i in range(n)]
    w = PackedWriter(tmp_path / "packed" / "t-UTT", "t-UTT", names, dim)
    rows = np.random.default_rng(0).normal(size=(n, dim)).astype(np.float32)
    w.write(0, rows)
    store = PackedStore(w.close())
    pick = np.random.default_rng(1).choice(n, 150, replace=False)  # 10 % of the rows, spread over the file
    before = rss_file_mb()
    got = store.get_many([names[i] for i in pick])
    after = rss_file_mb()
    np.testing.assert_array_equal(got, rows[pick])
    assert after - before < 5, f"{after - before:.1f} MB of file pages mapped by reading 3 MB of rows"


# --------------------------------------------------------------------------- open_store
def test_open_store_prefers_the_pack_and_falls_back_to_the_folder(tmp_path):
    write_utt(tmp_path, "a-UTT", n=4, dim=3)
    assert open_store(tmp_path, "a-UTT").kind == "npy-folder"
    pack_folder(tmp_path / "features" / "a-UTT", progress=False)
    assert open_store(tmp_path, "a-UTT").kind == "packed"
    assert open_store(tmp_path, "a-UTT", prefer="npy").kind == "npy-folder"
    # a direct path to either kind of folder works too
    assert open_store(tmp_path, str(tmp_path / "packed" / "a-UTT")).kind == "packed"
    assert open_store(tmp_path, str(tmp_path / "features" / "a-UTT")).kind == "npy-folder"
    # a pack without its source folder is enough
    os.rename(tmp_path / "features" / "a-UTT", tmp_path / "moved")
    assert open_store(tmp_path, "a-UTT", prefer="npy").kind == "packed"


def test_missing_feature_folder_lists_the_available_ones(tmp_path):
    write_utt(tmp_path, "hubert-UTT", n=2, dim=3)
    write_utt(tmp_path, "clip-UTT", n=2, dim=3)
    with pytest.raises(FileNotFoundError) as err:
        open_store(tmp_path, "baichuan-UTT")
    msg = str(err.value)
    assert "baichuan-UTT" in msg and "available: clip-UTT, hubert-UTT" in msg


def test_empty_or_absent_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        NpyFolderStore(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no .npy files"):
        NpyFolderStore(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="not a packed store"):
        PackedStore(tmp_path / "empty")


# --------------------------------------------------------------------------- errors name the clip
@pytest.fixture(params=["npy-folder", "packed"])
def kind(request):
    return request.param


def _store(tmp_path, kind, feature="a-UTT"):
    folder = tmp_path / "features" / feature
    return NpyFolderStore(folder) if kind == "npy-folder" else PackedStore(pack_folder(folder, progress=False))


def test_clip_without_a_feature_file(tmp_path, kind):
    write_utt(tmp_path, "a-UTT", n=3, dim=2)
    store = _store(tmp_path, kind)
    for call in (lambda: store.get("clip_999"), lambda: store.get_many(["clip_000", "clip_999"])):
        with pytest.raises(KeyError) as err:
            call()
        assert "'clip_999'" in str(err.value) and "a-UTT" in str(err.value)


def test_dimension_mismatch_names_the_clip_and_file(tmp_path):
    write_utt(tmp_path, "a-UTT", n=3, dim=4)
    bad = tmp_path / "features" / "a-UTT" / "clip_002.npy"
    np.save(bad, np.zeros(5, np.float32))
    store = NpyFolderStore(tmp_path / "features" / "a-UTT")
    with pytest.raises(ValueError) as err:
        store.get("clip_002")
    assert str(bad) in str(err.value) and "'clip_002'" in str(err.value) and "(5,)" in str(err.value)
    with pytest.raises(ValueError, match=re.escape(str(bad))):
        pack_folder(tmp_path / "features" / "a-UTT", progress=False)
    np.save(bad, np.zeros((2, 4), np.float32))  # frame-level array in an utterance-level folder
    with pytest.raises(ValueError, match="clip_002"):
        store.get("clip_002")


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_values_name_the_clip(tmp_path, value):
    write_utt(tmp_path, "a-UTT", n=4, dim=3)
    arr = np.ones(3, np.float32)
    arr[1] = value
    bad = tmp_path / "features" / "a-UTT" / "clip_001.npy"
    np.save(bad, arr)
    store = NpyFolderStore(tmp_path / "features" / "a-UTT")
    for call in (lambda: store.get("clip_001"), lambda: store.get_many(["clip_000", "clip_001"])):
        with pytest.raises(ValueError) as err:
            call()
        assert "NaN/Inf" in str(err.value) and str(bad) in str(err.value)
    with pytest.raises(ValueError, match="clip_001"):
        pack_folder(tmp_path / "features" / "a-UTT", progress=False)


def test_non_finite_values_in_a_pack_name_the_clip(tmp_path):
    write_utt(tmp_path, "a-UTT", n=6, dim=3)
    store = PackedStore(pack_folder(tmp_path / "features" / "a-UTT", progress=False))
    i = store.names.index("clip_004")
    data = np.load(store.path / "data.npy", mmap_mode="r+")
    data[i, 2] = np.nan
    data.flush()
    del data
    store = PackedStore(store.path)
    with pytest.raises(ValueError, match="NaN/Inf") as err:
        store.get_many(["clip_000", "clip_005", "clip_004", "clip_001"])
    assert "'clip_004'" in str(err.value)
    with pytest.raises(ValueError, match="'clip_004'"):
        store.get("clip_004")


def test_corrupt_npy_names_the_file(tmp_path):
    write_utt(tmp_path, "a-UTT", n=3, dim=4)
    bad = tmp_path / "features" / "a-UTT" / "clip_001.npy"
    bad.write_bytes(np.random.default_rng(0).bytes(200))
    store = NpyFolderStore(tmp_path / "features" / "a-UTT")
    with pytest.raises(ValueError) as err:
        store.get("clip_001")
    assert str(bad) in str(err.value) and "'clip_001'" in str(err.value)
    with pytest.raises(ValueError, match=re.escape(str(bad))):
        pack_folder(tmp_path / "features" / "a-UTT", progress=False)
    # a corrupt first file (the one the store reads its shape from) fails at open, naming it
    first = tmp_path / "features" / "a-UTT" / "clip_000.npy"
    first.write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(ValueError, match=re.escape(str(first))):
        NpyFolderStore(tmp_path / "features" / "a-UTT")


def test_truncated_npy_names_the_file(tmp_path):
    write_utt(tmp_path, "a-UTT", n=3, dim=64)
    bad = tmp_path / "features" / "a-UTT" / "clip_002.npy"
    bad.write_bytes(bad.read_bytes()[:-40])
    with pytest.raises(ValueError, match=re.escape(str(bad))):
        NpyFolderStore(tmp_path / "features" / "a-UTT").get("clip_002")


def test_zero_frame_array_names_the_clip(tmp_path):
    write_frames(tmp_path, "a-FRA", n=3, dim=5)
    bad = tmp_path / "features" / "a-FRA" / "clip_001.npy"
    np.save(bad, np.zeros((0, 5), np.float32))
    store = NpyFolderStore(tmp_path / "features" / "a-FRA")
    with pytest.raises(ValueError, match="zero frames") as err:
        store.get("clip_001")
    assert str(bad) in str(err.value)
    with pytest.raises(ValueError, match="zero frames"):
        pack_folder(tmp_path / "features" / "a-FRA", progress=False)


def test_open_store_ignores_a_same_named_folder_in_the_working_directory(tmp_path, monkeypatch):
    write_utt(tmp_path / "root", "a-UTT", n=3, dim=4)
    pack_folder(tmp_path / "root" / "features" / "a-UTT", progress=False)
    shutil.rmtree(tmp_path / "root" / "features")  # a packed-only root
    write_utt(tmp_path / "elsewhere", "a-UTT", n=2, dim=9)
    monkeypatch.chdir(tmp_path / "elsewhere" / "features")  # holds an unrelated ./a-UTT
    store = open_store(tmp_path / "root", "a-UTT")
    assert (store.kind, store.dim, len(store)) == ("packed", 4, 3)


# --------------------------------------------------------------------------- stale packs
def _bump(path, seconds=5):
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + seconds * 10**9))


@pytest.mark.parametrize("change", ["touch", "add", "remove"])
def test_a_pack_older_than_its_npy_folder_is_refused(tmp_path, change):
    write_utt(tmp_path, "a-UTT", n=4, dim=3)
    folder = tmp_path / "features" / "a-UTT"
    pack_folder(folder, progress=False)
    assert open_store(tmp_path, "a-UTT").kind == "packed"  # fresh: fine
    if change == "touch":
        np.save(folder / "clip_001.npy", np.zeros(3, np.float32))  # re-extracted after packing
        _bump(folder / "clip_001.npy")
    elif change == "add":
        np.save(folder / "clip_new.npy", np.zeros(3, np.float32))
    else:
        os.remove(folder / "clip_002.npy")
    for open_ in (lambda: open_store(tmp_path, "a-UTT"), lambda: PackedStore(tmp_path / "packed" / "a-UTT")):
        with pytest.raises(ValueError) as err:
            open_()
        msg = str(err.value)
        assert "out of date" in msg and f"semimer pack {tmp_path} a-UTT" in msg
    pack_folder(folder, progress=False)  # the fix the message gives
    assert len(open_store(tmp_path, "a-UTT")) == {"touch": 4, "add": 5, "remove": 3}[change]


def test_a_moved_data_root_keeps_its_fresh_pack(tmp_path):
    write_utt(tmp_path / "a", "a-UTT", n=3, dim=2)
    pack_folder(tmp_path / "a" / "features" / "a-UTT", progress=False)
    os.rename(tmp_path / "a", tmp_path / "b")  # the source path is recorded relative to the pack
    assert open_store(tmp_path / "b", "a-UTT").kind == "packed"
    _bump(tmp_path / "b" / "features" / "a-UTT" / "clip_000.npy")
    with pytest.raises(ValueError, match="out of date"):
        open_store(tmp_path / "b", "a-UTT")


def test_store_kinds_without_a_registry():
    import semimer.data.store as store

    assert (NpyFolderStore.kind, PackedStore.kind) == ("npy-folder", "packed")
    assert not hasattr(store, "register_store") and not hasattr(store, "STORE_TYPES")


# --------------------------------------------------------------------------- file permissions
def test_written_files_follow_the_umask(tmp_path):
    from semimer.io import current_umask, write_json

    old = os.umask(0o022)
    try:
        assert current_umask() == 0o022
        write_json(tmp_path / "x.json", {"a": 1})
        write_utt(tmp_path, "a-UTT", n=2, dim=2)
        out = pack_folder(tmp_path / "features" / "a-UTT", progress=False)
        for f in (tmp_path / "x.json", out / "manifest.json"):
            assert oct(os.stat(f).st_mode & 0o777) == oct(0o644), f
        os.umask(0o077)
        write_json(tmp_path / "x.json", {"a": 2})
        assert os.stat(tmp_path / "x.json").st_mode & 0o777 == 0o600
    finally:
        os.umask(old)
