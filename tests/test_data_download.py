"""Download of mnist_test_seq.npy over HTTP from a local server: verify, cache, and fail cleanly."""

import hashlib
import http.server
import io
import json
import threading
from pathlib import Path

import numpy as np
import pytest

from nfp.config import DataConfig, SplitConfig
from nfp.data import download
from nfp.data.manifest import load_manifest
from nfp.data.pipeline import read_clips
from nfp.data.prepare import ensure_prepared, prepare
from nfp.errors import DataError

CLIPS = 12


def npy_bytes(array) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


@pytest.fixture(scope="module")
def real_layout():
    """A small file in the exact real layout: (20 frames, clips, 64, 64) uint8, each clip its own value."""
    array = np.zeros((20, CLIPS, 64, 64), np.uint8)
    for i in range(CLIPS):
        array[:, i] = np.arange(20, dtype=np.uint8)[:, None, None] + 10 * i
    return array


@pytest.fixture(scope="module")
def server(real_layout):
    """http://127.0.0.1:PORT serving files from a dict; /truncated.npy announces the full size, sends half."""
    good = npy_bytes(real_layout)
    files = {
        "/mnist_test_seq.npy": good,
        "/garbage.npy": b"not a numpy file at all" * 100,
        "/float.npy": npy_bytes(real_layout[:, :2].astype(np.float32)),
        "/truncated.npy": good,
    }
    hits = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            body = files.get(self.path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.path == "/truncated.npy":
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield {
        "url": f"http://127.0.0.1:{httpd.server_port}",
        "hits": hits,
        "sha256": hashlib.sha256(good).hexdigest(),
        "md5": hashlib.md5(good).hexdigest(),
        "size": len(good),
    }
    httpd.shutdown()
    httpd.server_close()


def cfg_for(tmp_path, url, **kw) -> DataConfig:
    base = dict(
        source="download", url=url, cache_dir=str(tmp_path / "cache"), dir=str(tmp_path / "data"), num_shards=2, seed=0
    )
    return DataConfig(**{**base, **kw})


def cached_files(tmp_path) -> list[str]:
    return sorted(p.name for p in (tmp_path / "cache").rglob("*") if p.is_file())


def test_download_verifies_and_reuses_the_cache(tmp_path, server, real_layout):
    cfg = cfg_for(tmp_path, server["url"] + "/mnist_test_seq.npy", sha256=server["sha256"], size_bytes=server["size"])
    path = download.fetch(cfg, progress=False)
    assert path.parent.parent.parent == tmp_path / "cache" and path.name == "mnist_test_seq.npy"
    np.testing.assert_array_equal(download.open_clips(path, cfg), real_layout[..., None])  # (T, N, H, W, C)
    hits = len(server["hits"])
    assert download.fetch(cfg, progress=False) == path
    assert len(server["hits"]) == hits  # served from the verified cache


def test_progress_bar_counts_bytes(tmp_path, server, capsys):
    download.fetch(cfg_for(tmp_path, server["url"] + "/mnist_test_seq.npy"), progress=True)
    assert "983k/983k" in capsys.readouterr().err  # bytes, scaled


def test_prepare_from_the_download_splits_its_clips_with_a_seed(tmp_path, server, real_layout):
    cfg = cfg_for(tmp_path, server["url"] + "/mnist_test_seq.npy", split=SplitConfig(train=8, val=2, test=2))
    manifest = prepare(cfg, progress=False).content
    assert manifest["source"]["kind"] == "download" and manifest["source"]["sha256"] == server["sha256"]
    assert manifest["clip_shape"] == [20, 64, 64, 1]
    got = np.concatenate([read_clips(cfg, load_manifest(cfg.dir), s, 12) for s in ("train", "val", "test")])
    ids = sorted(int(clip[0, 0, 0, 0]) // 10 for clip in got)
    assert ids == list(range(CLIPS))  # every clip exactly once
    np.testing.assert_array_equal(got[0], real_layout[:, int(got[0, 0, 0, 0, 0]) // 10, ..., None])
    assert [int(c[0, 0, 0, 0]) // 10 for c in got[:8]] != list(range(8))  # shuffled by the seed


def test_num_clips_caps_and_frames_cut_the_download(tmp_path, server):
    cfg = cfg_for(tmp_path, server["url"] + "/mnist_test_seq.npy", num_clips=6, frames=10, num_shards=1)
    manifest = prepare(cfg, progress=False).content
    assert sum(e["count"] for e in manifest["splits"].values()) == 6 and manifest["clip_shape"] == [10, 64, 64, 1]
    assert all(int(c[0, 0, 0, 0]) // 10 < 6 for c in read_clips(cfg, load_manifest(cfg.dir), "train", 6))


def test_local_path_and_file_url_are_read_in_place(tmp_path, real_layout):
    path = tmp_path / "seq.npy"
    np.save(path, real_layout)
    assert download.fetch(cfg_for(tmp_path, str(path)), progress=False) == path
    assert download.fetch(cfg_for(tmp_path, f"file://{path}"), progress=False) == path


def test_sha256_mismatch_is_an_error_and_nothing_is_kept(tmp_path, server):
    cfg = cfg_for(tmp_path, server["url"] + "/mnist_test_seq.npy", sha256="0" * 64)
    with pytest.raises(DataError, match="mnist_test_seq.npy has sha256 .*, expected 0000.* \\(data.sha256\\)"):
        download.fetch(cfg, progress=False)
    assert cached_files(tmp_path) == []


def test_wrong_size_is_an_error_and_nothing_is_kept(tmp_path, server):
    cfg = cfg_for(tmp_path, server["url"] + "/mnist_test_seq.npy", size_bytes=server["size"] + 1)
    with pytest.raises(DataError, match=f"is {server['size']} bytes, expected {server['size'] + 1}"):
        download.fetch(cfg, progress=False)
    assert cached_files(tmp_path) == []


def test_404_is_an_error(tmp_path, server):
    with pytest.raises(DataError, match="data.url: .*/missing.npy not found \\(404\\)"):
        download.fetch(cfg_for(tmp_path, server["url"] + "/missing.npy"), progress=False)
    assert cached_files(tmp_path) == []


def test_a_transfer_cut_short_is_an_error_and_nothing_is_kept(tmp_path, server):
    with pytest.raises(DataError, match="data.url: cannot download .*/truncated.npy \\(ClientPayloadError"):
        download.fetch(cfg_for(tmp_path, server["url"] + "/truncated.npy"), progress=False)
    assert cached_files(tmp_path) == []


def test_a_file_that_is_not_npy_is_an_error_naming_it(tmp_path, server):
    with pytest.raises(DataError, match="garbage.npy.*: not a .npy file \\(no NumPy header\\)"):
        download.fetch(cfg_for(tmp_path, server["url"] + "/garbage.npy"), progress=False)
    assert cached_files(tmp_path) == []


def test_wrong_dtype_is_an_error_naming_the_file(tmp_path, server):
    with pytest.raises(DataError, match="float.npy: got shape \\(20, 2, 64, 64\\) dtype float32, expected .* uint8"):
        download.fetch(cfg_for(tmp_path, server["url"] + "/float.npy"), progress=False)


def test_a_truncated_local_file_is_an_error_naming_it(tmp_path, real_layout):
    path = tmp_path / "cut.npy"
    path.write_bytes(npy_bytes(real_layout)[:5000])
    with pytest.raises(DataError, match="cut.npy: not a complete .npy file"):
        download.fetch(cfg_for(tmp_path, str(path)), progress=False)


def test_unreachable_host_is_an_error(tmp_path):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DataError, match=f"data.url: cannot download http://127.0.0.1:{port}/x.npy"):
        download.fetch(cfg_for(tmp_path, f"http://127.0.0.1:{port}/x.npy"), progress=False)


@pytest.mark.parametrize("url", ["ftp://example.org/mnist_test_seq.npy", "gs://bucket/mnist_test_seq.npy"])
def test_schemes_outside_allowed_schemes_are_refused(tmp_path, url):
    with pytest.raises(
        DataError, match="data.url: scheme '(ftp|gs)' .* is not allowed; data.allowed_schemes: http, https"
    ):
        download.fetch(cfg_for(tmp_path, url, allowed_schemes=["http", "https"]), progress=False)


def test_the_toronto_url_has_a_known_size_and_md5():
    known = download.KNOWN[DataConfig().url]
    assert known["size_bytes"] == 20 * 10000 * 64 * 64 + 96
    assert known["md5"] == "be083ec986bfe91a449d63653c411eb2"  # as torchvision.datasets.MovingMNIST pins it


def test_a_known_md5_is_checked_and_a_mismatch_is_not_kept(tmp_path, server, monkeypatch):
    url = server["url"] + "/mnist_test_seq.npy"
    monkeypatch.setitem(download.KNOWN, url, {"size_bytes": server["size"], "sha256": None, "md5": "f" * 32})
    with pytest.raises(
        DataError, match=r"mnist_test_seq.npy has md5 [0-9a-f]{32}, expected f{32} \(the known md5 of this URL\)"
    ):
        download.fetch(cfg_for(tmp_path, url), progress=False)
    assert cached_files(tmp_path) == []
    monkeypatch.setitem(download.KNOWN, url, {"size_bytes": server["size"], "sha256": None, "md5": server["md5"]})
    path = download.fetch(cfg_for(tmp_path, url), progress=False)
    assert cached_files(tmp_path) == ["mnist_test_seq.npy", "mnist_test_seq.npy.digests.json"]
    path.write_bytes(path.read_bytes()[:-1] + b"\x01")  # same size, other bytes: the cache is re-checked
    hits = len(server["hits"])
    assert download.fetch(cfg_for(tmp_path, url), progress=False) == path
    assert len(server["hits"]) == hits + 1 and download.file_digest(path, "md5") == server["md5"]  # downloaded again


def test_a_generate_config_does_not_replace_downloaded_clips_in_the_same_dir(tmp_path, server, capsys):
    """The newcomer's trap: real data prepared into data.dir, then a quickstart-like config pointed at it."""
    from nfp.cli import main

    real = cfg_for(tmp_path, server["url"] + "/mnist_test_seq.npy", num_clips=6, num_shards=1)
    prepare(real, progress=False)
    shards = {p.name: p.read_bytes() for p in Path(real.dir).iterdir()}
    argv = ["prepare", "data.source=generate", f"data.dir={real.dir}", "data.num_clips=24", "data.image_size=16",
            "data.digit_size=8", "data.frames=6", "data.num_shards=2", "evaluate.context_frames=3",
            "evaluate.predict_frames=3"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: data.dir {real.dir}: holds another data set (download of {server['url']}")
    assert (
        "this config makes (generate from sklearn digits, seed 0, 24 clips of 6×16×16)" in err and err.count("\n") == 1
    )
    assert {p.name: p.read_bytes() for p in Path(real.dir).iterdir()} == shards
    assert main([*argv, "data.overwrite=true"]) == 0


def test_a_directory_or_a_renamed_text_file_as_data_url_says_what_it_is(tmp_path):
    with pytest.raises(
        DataError, match=r"^data.url .*: is a directory, expected a .npy file such as mnist_test_seq.npy$"
    ):
        download.fetch(cfg_for(tmp_path, str(tmp_path)), progress=False)
    text = tmp_path / "notes.npy"
    text.write_text("these are my notes, not clips\n")
    with pytest.raises(
        DataError,
        match=r"notes.npy: not a .npy file \(no NumPy header\), expected a .npy of \(time, clips, H, W\) uint8",
    ):
        download.fetch(cfg_for(tmp_path, str(text)), progress=False)


def test_asking_for_more_clips_than_the_file_holds_warns(tmp_path, server):
    cfg = cfg_for(tmp_path, server["url"] + "/mnist_test_seq.npy", num_clips=CLIPS + 5, num_shards=1)
    with pytest.warns(UserWarning, match=rf"data.num_clips: {CLIPS + 5} asked for, mnist_test_seq.npy holds {CLIPS}"):
        manifest = prepare(cfg, progress=False)
    assert sum(manifest.count(s) for s in manifest.splits) == CLIPS


def test_credentials_in_data_url_never_reach_the_manifest_or_the_data_dir(tmp_path, server):
    url = server["url"].replace("http://", "http://someone:s3cret-pw@") + "/mnist_test_seq.npy"
    cfg = cfg_for(tmp_path, url, num_clips=6, num_shards=1)
    manifest = prepare(cfg, progress=False)
    assert (
        manifest.content["source"]["url"]
        == manifest.content["config"]["url"]
        == (server["url"].replace("http://", "http://***@") + "/mnist_test_seq.npy")
    )
    for path in Path(cfg.dir).iterdir():
        assert b"s3cret-pw" not in path.read_bytes() and b"someone" not in path.read_bytes(), path.name
    assert "s3cret-pw" not in json.dumps(load_manifest(cfg.dir).content)
    assert ensure_prepared(cfg).content == manifest.content  # the redacted config still matches its own dir
