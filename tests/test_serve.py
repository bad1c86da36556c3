"""`semimer serve`: the JSON API (FastAPI's TestClient), a real uvicorn server under 20 concurrent
requests, and the page driven in headless Chromium (skipped where Chromium, ChromeDriver or
Selenium is missing; CI installs them in .ci/run).

One tiny run is built per module, as in test_predict.py: 8 one-second clips of 160x160 pixels (the
Haar cascade finds the astronaut's face at that size) with different tones, features from offline
extractors (logmel audio, face-hog video, hf-text with a tiny BERT built here), two classes, 2 folds.
The browser test saves the page's screenshot; with SEMIMER_UPDATE_SCREENSHOT=1 it replaces
docs/serve-screenshot.png (shown in the README), otherwise it goes to the test's tmp folder.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import threading
import time
import wave
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("av")
pytest.importorskip("cv2")
pytest.importorskip("transformers")
pytest.importorskip("skimage")
pytest.importorskip("fastapi")
pytest.importorskip("httpx")  # FastAPI's TestClient
pytest.importorskip("python_multipart")  # FastAPI's form parsing
uvicorn = pytest.importorskip("uvicorn")

import httpx  # noqa: E402
from conftest_media import TINY_RUN_AUDIO as AUDIO, TINY_RUN_VIDEO as VIDEO, make_corrupt, tiny_media_run  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from semimer.cli import main  # noqa: E402
from semimer.serve import create_app  # noqa: E402
from semimer.infer.predict import predict_clips  # noqa: E402

CLASSES = ["neutral", "happy"]
TEXTS = ["i am happy", "i am sad", "hello world", "我今天很开心", "我很难过", "hello", "happy happy !", "sad ."]
SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "serve-screenshot.png"
REPORT = """# semimer recipe report

Data: `data/` with **8** clips. <script>alert(1)</script>

| round | neutral | happy |
|---|---|---|
| 1 | 1 | 5 |

- one
- two

![confusion](confusion.png) ![missing](nowhere.png)
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    t = tiny_media_run(tmp_path_factory.mktemp("serve"), TEXTS, CLASSES)
    root, run = t["root"], t["run"]
    wav = root / "speech.wav"  # audio only: the run's video feature is missing
    with wave.open(str(wav), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000)
        w.writeframes((8000 * np.sin(2 * np.pi * 300 * np.arange(16000) / 16000)).astype(np.int16).tobytes())
    return {**t, "wav": wav, "corrupt": make_corrupt(root / "corrupt.mp4"), "snapshot": _snapshot(run)}


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.relative_to(folder).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*"))}


@pytest.fixture(scope="module")
def client(trained):
    app = create_app(trained["run"], device="cpu", max_upload_mb=1)
    with TestClient(app) as c:
        c.app_state = app.state
        yield c


@pytest.fixture(scope="module")
def server(trained):
    """A real uvicorn server on a free localhost port, in a thread."""
    app = create_app(trained["run"], device="cpu", max_upload_mb=1)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not srv.started:
        assert thread.is_alive() and time.time() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield {"url": f"http://127.0.0.1:{port}", "app": app}
    srv.should_exit = True
    thread.join(10)


def _post(client, path: Path, name: str | None = None, transcript: str | None = TEXTS[3], **kw):
    data = {} if transcript is None else {"transcript": transcript}
    return client.post("/api/predict", files={"file": (name or path.name, path.read_bytes())}, data=data, **kw)


def _upload_root_is_empty(app_state) -> bool:
    return app_state.upload_root.is_dir() and not any(app_state.upload_root.iterdir())


# ---------------------------------------------------------------------------------------------
# the JSON API


def test_health_run_view_and_page(client, trained):
    h = client.get("/api/health").json()
    assert h["status"] == "ok" and h["classes"] == CLASSES and h["busy"] is False
    assert h["modalities"] == {"audio": AUDIO, "text": trained["text"], "video": VIDEO}
    assert h["needs_transcript"] == trained["text"] and h["max_upload_mb"] == 1 and ".wav" in h["accepts"]

    run = client.get("/api/run").json()
    assert run["classes"] == CLASSES and run["members"] == [{"dir": ".", "weight": 1.0, "folds": 2}]
    assert run["features"]["video"] == {"feature": VIDEO, "dim": 324, "level": "utt", "extractor": "face-hog"}
    labels = {h["label"]: h["value"] for h in run["headline"]}
    assert "±" in labels["CV WAF (%)"] and labels["labeled clips"] == "8" and labels["model"] == "attention"
    assert [r["class"] for r in run["per_class"]] == CLASSES and sum(r["clips"] for r in run["per_class"]) == 8
    assert np.sum(run["confusion"]) == 8 and run["metrics"]["model"] == "attention"
    assert {"confusion.png", "learning_curves.png"} <= set(run["images"]) and run["report"] is None

    png = client.get("/api/run/files/confusion.png")
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert png.content.startswith(b"\x89PNG")
    for name in ("features.json", "fold_0/model.safetensors", "../run/features.json", "%2e%2e/features.json",
                 "/etc/passwd", "..%2F..%2Fetc%2Fpasswd"):
        r = client.get(f"/api/run/files/{name}")
        assert r.status_code == 404, name

    page = client.get("/")
    assert page.status_code == 200 and 'id="predict-form"' in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert client.get("/static/app.js").status_code == 200


def test_api_answers_the_probabilities_of_semimer_predict(client, trained, capsys):
    clip = trained["videos"] / "c3.mp4"
    r = _post(client, clip)
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["name"] == "c3" and list(got["probs"]) == CLASSES
    p = np.array([got["probs"][c] for c in CLASSES])
    assert got["discrete"] == CLASSES[int(p.argmax())]

    names, probs, failures = predict_clips(trained["run"], [clip], {"c3": TEXTS[3]}, device="cpu")
    assert names == ["c3"] and not failures
    np.testing.assert_allclose(p, probs[0], atol=1e-6)
    assert main(["predict", str(clip), "--run", str(trained["run"]), "--json", "--transcript", TEXTS[3],
                 "--device", "cpu"]) == 0
    rec = json.loads(capsys.readouterr().out)
    np.testing.assert_allclose(p, [rec["probabilities"][c] for c in CLASSES], atol=1e-5)  # the CLI rounds to 6 places
    assert rec["emotion"] == got["discrete"]

    mods = got["modalities"]
    assert set(mods) == {"audio", "text", "video"} and mods["video"]["extractor"] == "face-hog"
    assert sum(m["weight"] for m in mods.values()) == pytest.approx(1.0, abs=1e-5)  # attention fusion weights
    assert all(m["probs"] is None and m["vote_weight"] is None for m in mods.values())
    assert got["fusion_head"] is None and got["transcript"] == TEXTS[3]
    (member,) = got["members"]
    assert member["model"] == "attention" and member["folds"] == 2
    np.testing.assert_allclose([member["probs"][c] for c in CLASSES], p, atol=1e-6)
    assert {"upload", "queue", "extract_audio", "extract_text", "extract_video", "predict", "faces",
            "total"} == set(got["seconds"])
    assert got["streams"] == {"audio": True, "video": True, "seconds": 1.0}
    assert got["faces"] and all(f["src"].startswith("data:image/jpeg;base64,") and f["detected"]
                                for f in got["faces"])
    # another transcript gives other probabilities: the transcript reaches the text extractor
    other = _post(client, clip, transcript="hello world").json()
    assert max(abs(other["probs"][c] - got["probs"][c]) for c in CLASSES) > 1e-4


def test_bad_uploads_get_a_clear_4xx_and_the_server_keeps_serving(client, trained, tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    notes = tmp_path / "notes.txt"
    notes.write_text("not a clip\n")
    fake_wav = tmp_path / "fake.wav"
    fake_wav.write_text("RIFF? no: text in a .wav\n" * 50)
    big = tmp_path / "big.mp4"
    big.write_bytes(b"\0" * (3 << 20))  # declared Content-Length over the limit: refused before reading
    over = tmp_path / "over.mp4"
    over.write_bytes(b"\0" * (3 << 19))  # 1.5 MB: within the form's slack, refused while saving
    cases = [
        (empty, None, 422, "empty"),
        (trained["corrupt"], None, 422, "the decoder cannot read this file"),
        (notes, None, 415, "file type .txt is not accepted"),
        (trained["corrupt"], "clip", 415, "(no extension)"),
        (fake_wav, None, 422, "the decoder cannot read this file"),
        (big, None, 413, "limit of 1 MB"),
        (over, None, 413, "limit of 1 MB"),
    ]
    for path, name, status, message in cases:
        r = _post(client, path, name)
        assert r.status_code == status, (path.name, r.text)
        assert message in r.json()["detail"], (path.name, r.json())
        assert trained["root"].as_posix() not in r.text and "request-" not in r.text  # no server paths
        assert client.get("/api/health").json()["status"] == "ok"

    r = _post(client, trained["wav"])  # audio only: predicted from audio + text, video reported missing
    assert r.status_code == 200 and set(r.json()["missing"]) == {"video"} and r.json()["used"] == ["audio", "text"]
    assert "no video stream" in r.json()["missing"]["video"] and r.json()["modalities"]["video"]["status"] == "missing"
    assert r.json()["modalities"]["video"]["weight"] == 0.0  # attention fusion: no weight on an absent modality
    missing: dict = {}
    names, probs, _ = predict_clips(trained["run"], [trained["wav"]], {"speech": TEXTS[3]}, "cpu", missing=missing)
    assert missing == {"speech": {"video": r.json()["missing"]["video"]}}
    np.testing.assert_allclose([r.json()["probs"][c] for c in CLASSES], probs[0], atol=1e-6)
    r = _post(client, trained["videos"] / "c1.mp4", transcript=None)  # no transcript: predicted without text
    assert r.status_code == 200 and set(r.json()["missing"]) == {"text"} and r.json()["transcript"] is None
    r = _post(client, trained["videos"] / "c1.mp4", transcript="x" * 10_001)
    assert r.status_code == 422 and "at most 10000" in r.json()["detail"]
    r = client.post("/api/predict", data={"transcript": "no file"})
    assert r.status_code == 422 and "'file'" in r.json()["detail"]

    def chunked():  # no Content-Length: the limit is enforced while the body arrives
        yield (b"--b0undary\r\nContent-Disposition: form-data; name=\"file\"; filename=\"s.mp4\"\r\n"
               b"Content-Type: video/mp4\r\n\r\n")
        for _ in range(3):
            yield b"\0" * (1 << 20)
        yield b"\r\n--b0undary--\r\n"

    r = client.post("/api/predict", content=chunked(),
                    headers={"content-type": "multipart/form-data; boundary=b0undary"})
    assert r.status_code == 413 and "limit of 1 MB" in r.json()["detail"]

    assert _upload_root_is_empty(client.app_state)
    assert _post(client, trained["videos"] / "c2.mp4").status_code == 200  # still serving


def test_a_clip_longer_than_the_limit_is_refused(trained):
    from semimer.serve.uploads import ApiError, probe

    clip = trained["videos"] / "c0.mp4"
    assert probe(clip, "c0.mp4", 5.0) == {"audio": True, "video": True, "seconds": 1.0}
    with pytest.raises(ApiError) as err:
        probe(clip, "c0.mp4", 0.5)
    assert err.value.status_code == 422 and "lasts 1.0 s" in err.value.detail and "--max-seconds" in err.value.detail


def test_path_like_file_names_are_labels_not_paths(client, trained):
    from semimer.serve.uploads import clip_name

    tmp = Path(tempfile.gettempdir())
    before = set(tmp.iterdir())
    names = {"../../etc/passwd.mp4": "passwd", "..\\..\\Windows\\evil.mp4": "evil", "/tmp/abs.mp4": "abs",
             "..mp4": "upload", "ü ber;rm -rf $HOME.mp4": "ü_ber_rm_-rf_HOME", "C:\\x\\.hidden.mp4": "hidden"}
    for sent, expected in names.items():
        assert clip_name(sent) == expected
        r = _post(client, trained["videos"] / "c4.mp4", name=sent)
        assert r.status_code == 200 and r.json()["name"] == expected, r.text
    assert not (tmp / "abs.mp4").exists() and not (trained["run"] / "passwd.mp4").exists()
    assert not {p for p in set(tmp.iterdir()) - before if p.suffix == ".mp4"}
    assert _upload_root_is_empty(client.app_state)


# ---------------------------------------------------------------------------------------------
# a real server


def test_twenty_concurrent_requests_queue_and_leave_no_temporary_files(server, trained, monkeypatch):
    import semimer.serve.app as serve_app

    inside, most = [0], [0]
    lock = threading.Lock()
    explain = serve_app.explain_clip

    def counting(*args, **kwargs):
        with lock:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        try:
            return explain(*args, **kwargs)
        finally:
            with lock:
                inside[0] -= 1

    monkeypatch.setattr(serve_app, "explain_clip", counting)
    clip = (trained["videos"] / "c5.mp4").read_bytes()

    def one(i: int) -> httpx.Response:
        return httpx.post(server["url"] + "/api/predict", files={"file": (f"clip{i}.mp4", clip)},
                          data={"transcript": TEXTS[5]}, timeout=120)

    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(one, range(20)))
    assert [a.status_code for a in answers] == [200] * 20, [a.text for a in answers if a.status_code != 200]
    probs = [a.json()["probs"] for a in answers]
    assert all(p == probs[0] for p in probs)
    assert sorted(a.json()["name"] for a in answers) == sorted(f"clip{i}" for i in range(20))
    assert most[0] == 1  # one prediction at a time: the others queued
    assert max(a.json()["seconds"]["queue"] for a in answers) > 0
    assert _upload_root_is_empty(server["app"].state)
    assert httpx.get(server["url"] + "/api/health").json()["busy"] is False


def _browser(profile: Path):
    """Headless Debian Chromium through Selenium (a fresh profile in ``profile``), or skip saying
    what is missing."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
    from selenium.webdriver.chrome.service import Service

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip("Chromium and ChromeDriver are not installed (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1100,1700", "--hide-scrollbars",
                 "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"):
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # the page's console, checked below
    return webdriver.Chrome(service=Service(driver), options=options)


def test_the_page_in_headless_chromium(server, trained, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    browser = _browser(tmp_path / "chromium")
    try:
        wait = WebDriverWait(browser, 60)
        browser.get(server["url"] + "/")
        wait.until(lambda b: b.find_element(By.ID, "run-name").text == "run")
        assert trained["text"] in browser.find_element(By.ID, "transcript-hint").text
        assert len(browser.find_elements(By.CSS_SELECTOR, "#per-class tr")) == 1 + len(CLASSES)

        # a corrupt file: the error is shown, the page keeps working
        browser.find_element(By.ID, "file").send_keys(str(trained["corrupt"]))
        browser.find_element(By.ID, "submit").click()
        error = wait.until(ec.visibility_of_element_located((By.ID, "error")))
        assert "cannot read this file" in error.text

        # the microphone (Chromium's fake device): audio only, so the run's video is missing
        browser.find_element(By.ID, "record").click()
        wait.until(lambda b: b.find_element(By.ID, "record").text == "Stop recording")
        time.sleep(1.5)
        browser.find_element(By.ID, "record").click()
        wait.until(lambda b: "recording." in b.find_element(By.ID, "file-label").text)
        browser.find_element(By.ID, "transcript").send_keys(TEXTS[0])  # Latin script: CI has no CJK font
        browser.find_element(By.ID, "submit").click()
        wait.until(lambda b: "no video stream" in b.find_element(By.ID, "fusion-head").text)
        assert "predicted from audio, text" in browser.find_element(By.ID, "fusion-head").text

        # a clip: the predicted emotion is read off the page
        browser.find_element(By.ID, "file").send_keys(str(trained["videos"] / "c0.mp4"))
        browser.find_element(By.ID, "submit").click()
        emotion = wait.until(ec.visibility_of_element_located((By.ID, "emotion"))).text
        expected = httpx.post(server["url"] + "/api/predict", data={"transcript": TEXTS[0]}, timeout=120,
                              files={"file": ("c0.mp4", (trained["videos"] / "c0.mp4").read_bytes())}).json()
        assert emotion == expected["discrete"]
        assert not browser.find_element(By.ID, "error").is_displayed()
        bars = browser.find_elements(By.CSS_SELECTOR, "#probs .bar")
        assert [b.get_attribute("data-class") for b in bars] == sorted(CLASSES, key=lambda c: -expected["probs"][c])
        assert bars[0].find_element(By.CSS_SELECTOR, ".value").text == f"{expected['probs'][emotion]:.3f}"
        assert len(browser.find_elements(By.CSS_SELECTOR, "#modalities tr")) == 1 + 3
        assert browser.find_element(By.ID, "transcript-used").text == TEXTS[0]
        assert browser.find_elements(By.CSS_SELECTOR, "#faces img")
        html = browser.execute_script("const d = document.createElement('div'); renderMarkdown(arguments[0], d);"
                                      " return d.innerHTML;", REPORT)
        assert "<h3>semimer recipe report</h3>" in html and "<th>round</th>" in html and "<td>5</td>" in html
        assert '<img src="/api/run/files/confusion.png" alt="confusion">' in html and "<li>" in html
        assert "<script>" not in html and "&lt;script&gt;" in html and "[missing]" in html  # text only
        shot = SCREENSHOT if os.environ.get("SEMIMER_UPDATE_SCREENSHOT") == "1" else tmp_path / "page.png"
        assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
        errors = [e["message"] for e in browser.get_log("browser") if e["source"] == "javascript"]
        assert not errors, errors
    finally:
        browser.quit()
    assert SCREENSHOT.stat().st_size < 600_000


# ---------------------------------------------------------------------------------------------
# the command and the run folder


def test_mrccl_run_shows_each_head(trained, tmp_path):
    from semimer.infer.explain import explain_clip
    from semimer.infer.predict import load_ensemble, predict_clips

    run = tmp_path / "mrccl"
    assert main(["train", "--data", str(trained["data"]), "--audio", AUDIO, "--text", trained["text"], "--video", VIDEO,
                 "--model", "mrccl", "--out", str(run), f"data.classes=[{','.join(CLASSES)}]", "train.epochs=1",
                 "train.folds=2", "train.progress=false", "model.hidden=16", "model.head_hidden=8"]) == 0
    ens = load_ensemble(run, "cpu")
    clip = trained["videos"] / "c6.mp4"
    got = explain_clip(ens, clip, TEXTS[6]).as_dict()
    _, probs, _ = predict_clips(run, [clip], {"c6": TEXTS[6]}, ensemble=ens)
    np.testing.assert_allclose([got["probs"][c] for c in CLASSES], probs[0], atol=1e-6)
    assert got["members"][0]["model"] == "mrccl"
    assert set(got["members"][0]["heads"]) == {"audio", "text", "video", "fusion"}
    votes = [m["vote_weight"] for m in got["modalities"].values()] + [got["fusion_head"]["vote_weight"]]
    assert sum(votes) == pytest.approx(1.0, abs=1e-5)
    assert all(sum(m["probs"].values()) == pytest.approx(1.0, abs=1e-5) for m in got["modalities"].values())
    assert all(m["weight"] is None for m in got["modalities"].values())  # no attention fusion in MR-CCL


def test_the_view_of_a_recipe_run(trained, tmp_path):
    from semimer.infer.predict import load_ensemble
    from semimer.io import write_json
    from semimer.serve.run_view import run_summary

    run = tmp_path / "recipe"
    shutil.copytree(trained["run"], run)
    write_json(run / "metrics.json", {
        "members": ["attention"], "seconds": {"total": float("nan")},
        "final": {"cv_waf": {"mean": 0.5, "std": 0.1, "n": 2}, "oof_waf": 0.5, "test": {"waf": 0.42},
                  "what": "attention fold ensemble of round_1"},
        "pseudo_labels_per_round": {"1": {"per_fold": [[1, 2], [0, 3]], "total": {"neutral": 1, "happy": 5}},
                                    "2": {"per_fold": [[1, 1], [1, 1]], "accuracy": None}}})
    (run / "report.md").write_text(REPORT, encoding="utf-8")
    (run / "round_1").mkdir()
    shutil.copy(run / "confusion.png", run / "round_1" / "learning_curves.png")
    view = run_summary(load_ensemble(run, "cpu"))
    labels = {h["label"]: h["value"] for h in view["headline"]}
    assert labels["CV WAF (%)"] == "50.00 ± 10.00 (n=2)" and labels["test WAF (%)"] == "42.00"
    assert labels["model"] == "attention" and labels["final predictions"].startswith("attention fold")
    assert view["pseudo_labels"] == [{"round": "1", "counts": {"neutral": 1, "happy": 5}, "total": 6},
                                     {"round": "2", "counts": {"neutral": 2, "happy": 2}, "total": 4}]
    assert "round_1/learning_curves.png" in view["images"] and view["report"] == REPORT
    app = create_app(run, device="cpu")
    with TestClient(app) as c:
        got = c.get("/api/run").json()  # NaN in metrics.json is null in JSON
        assert got["metrics"]["seconds"]["total"] is None and got["pseudo_labels"] == view["pseudo_labels"]
        assert c.get("/api/run/files/report.md").text == REPORT
        assert c.get("/api/run/files/round_1/learning_curves.png").status_code == 200


def test_command_errors(trained, tmp_path, capsys):
    assert main(["serve", "--run", str(tmp_path / "missing")]) == 1
    err = capsys.readouterr().err
    assert "missing" in err and "does not exist" in err and "semimer train" in err and "Traceback" not in err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", "--run", str(trained["run"]), "--port", str(port)]) == 1
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}" in err and "--port" in err
    assert main(["serve", "--run", str(trained["run"]), "--max-upload-mb", "0"]) == 1
    assert "--max-upload-mb" in capsys.readouterr().err


def test_the_run_folder_is_never_written(trained, client, server):
    assert _snapshot(trained["run"]) == trained["snapshot"]
