"""The FastAPI application of ``semimer serve``: a page and a JSON API for one trained run.

Routes::

    GET  /                        the page (static/index.html + app.js + style.css, no build step)
    GET  /api/health              {"status": "ok", "run", "classes", "modalities", "needs_transcript",
                                   "max_upload_mb", "max_seconds", "accepts", "busy"}
    GET  /api/run                 the run: classes, features, members, scores, per-class F1,
                                  confusion, pseudo-labels, plots, report (semimer.serve.run_view)
    GET  /api/run/files/<name>    one of the run's plots or report.md (only those)
    POST /api/predict             multipart: file (a video or audio file), transcript (optional)
                                  -> {"name", "discrete", "probs": {class: p}, "modalities": {...},
                                      "missing": {modality: reason}, "used": [modality, ...],
                                      "fusion_head", "members", "transcript", "faces", "streams",
                                      "seconds": {stage: s, "total": s}}

A clip lacking some of the run's modalities is predicted from the others (``"missing": {modality:
reason}``, ``"used"``, and ``modalities[m]["status"]`` say so). Errors answer ``{"detail": message}``
(a 422 for a clip with none of the run's modalities adds ``"missing": {modality: reason}``): 413 too large, 415 not a media type, 422 empty / unreadable / too long / not
predictable, 500 a server-side problem (also logged). Any of them leaves the server serving.

Safety: the run's models are loaded once; one prediction runs at a time (:data:`PREDICT_LOCK`),
later requests wait; each upload lives in its own temporary folder under the server's
(``app.state.upload_root``), removed when the request ends, whatever happened; the client's file
name is never a path (:mod:`semimer.serve.uploads`); nothing is written into the run folder.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, File, Form, UploadFile
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from semimer.extract.decode import MEDIA_EXTENSIONS
from semimer.infer.explain import UnpredictableClip, explain_clip
from semimer.infer.inputs import needs_transcript
from semimer.infer.predict import Ensemble, load_ensemble
from semimer.serve.faces import face_crops
from semimer.serve.run_view import run_files, run_summary
from semimer.serve.uploads import ApiError, clip_name, media_suffix, probe, save, too_large
from semimer.utils import log

STATIC = Path(__file__).parent / "static"
PREDICT_PATH = "/api/predict"
FORM_SLACK = 1 << 20  # bytes of a request allowed beyond the file: multipart headers and the transcript
MAX_TRANSCRIPT = 10_000  # characters
PAGE_POLICY = ("default-src 'self'; img-src 'self' data:; media-src 'self' blob:; object-src 'none'; "
               "base-uri 'none'; frame-ancestors 'none'")

#: One prediction at a time in this process: the run's models and the extractors (built once per
#: process by semimer.extract) are shared, so concurrent requests queue here.
PREDICT_LOCK = threading.Lock()


class BodyLimit:
    """ASGI middleware: a request to :data:`PREDICT_PATH` whose body is larger than
    ``limit_bytes`` is answered 413 as soon as that is known: before anything is read when it
    declares its Content-Length, else while it arrives. Nothing past the limit is stored."""

    def __init__(self, app, limit_bytes: int, upload_bytes: int):
        self.app, self.limit_bytes, self.upload_bytes = app, limit_bytes, upload_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] != PREDICT_PATH:
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        received = 0

        async def limited_receive():
            nonlocal received
            if declared.isdigit() and int(declared) > self.limit_bytes:
                raise too_large(self.upload_bytes)
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit_bytes:
                    raise too_large(self.upload_bytes)
            return message

        await self.app(scope, limited_receive, send)


def create_app(run_dir: str | Path, *, device: Any = "auto", max_upload_mb: float = 50.0,
               max_seconds: float = 60.0) -> FastAPI:
    """The application for run folder ``run_dir``: loads its fold ensemble now (on ``device``)
    and reads what the page shows about it. Uploads are limited to ``max_upload_mb`` MB and clips to
    ``max_seconds`` seconds. Serve it with any ASGI server (``semimer serve`` uses uvicorn)."""
    if not max_upload_mb > 0 or not max_seconds > 0:
        raise ValueError(f"--max-upload-mb ({max_upload_mb}) and --max-seconds ({max_seconds}) must be positive")
    ensemble = load_ensemble(run_dir, device)
    upload_bytes = int(max_upload_mb * 2**20)
    summary = _json_text(run_summary(ensemble))
    files = run_files(Path(ensemble.run_dir))
    health = {"status": "ok", "run": Path(ensemble.run_dir).resolve().name, "classes": list(ensemble.classes),
              "modalities": {m: f["feature"] for m, f in ensemble.features.items()},
              "needs_transcript": needs_transcript(ensemble.features), "max_upload_mb": max_upload_mb,
              "max_seconds": max_seconds, "accepts": list(MEDIA_EXTENSIONS)}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.upload_root = Path(tempfile.mkdtemp(prefix="semimer-serve-"))
        try:
            yield
        finally:
            shutil.rmtree(app.state.upload_root, ignore_errors=True)

    app = FastAPI(title="semimer serve", summary=f"emotion recognition with run {health['run']}",
                  lifespan=lifespan)
    app.add_middleware(BodyLimit, limit_bytes=upload_bytes + FORM_SLACK, upload_bytes=upload_bytes)
    app.add_exception_handler(ApiError, _error_answer)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Content-Security-Policy": PAGE_POLICY})

    @app.get("/api/health")
    def api_health() -> dict:
        return {**health, "busy": PREDICT_LOCK.locked()}

    @app.get("/api/run")
    def api_run() -> Response:
        return Response(summary, media_type="application/json")

    @app.get("/api/run/files/{name:path}")
    def api_run_file(name: str) -> FileResponse:
        path = files.get(name)
        if path is None:
            raise ApiError(404, f"{name!r} is not one of the run's plots or its report (see images in /api/run)")
        kind = "image/png" if path.suffix == ".png" else "text/markdown; charset=utf-8"
        return FileResponse(path, media_type=kind, headers={"X-Content-Type-Options": "nosniff"})

    @app.post(PREDICT_PATH)
    def api_predict(file: Annotated[UploadFile | None, File(description="a video or audio file")] = None,
                    transcript: Annotated[str | None, Form(description="what is said in the clip")] = None
                    ) -> dict:
        return _predict(app.state.upload_root, ensemble, file, transcript, upload_bytes, max_seconds)

    return app


def _predict(upload_root: Path, ensemble: Ensemble, file: UploadFile | None, transcript: str | None,
             upload_bytes: int, max_seconds: float) -> dict[str, Any]:
    t0 = time.perf_counter()
    if file is None:
        raise ApiError(422, "no file: send the clip as the multipart form field 'file'")
    name, suffix = clip_name(file.filename), media_suffix(file.filename)
    text = (transcript or "").strip() or None
    if text is not None and len(text) > MAX_TRANSCRIPT:
        raise ApiError(422, f"the transcript has {len(text)} characters; at most {MAX_TRANSCRIPT} are taken")
    with tempfile.TemporaryDirectory(dir=upload_root, prefix="request-") as tmp:
        path = save(file.file, Path(tmp), suffix, upload_bytes)
        streams = probe(path, name + suffix, max_seconds)
        seconds = {"upload": time.perf_counter() - t0}
        with PREDICT_LOCK:
            seconds["queue"] = time.perf_counter() - t0 - seconds["upload"]
            try:
                explained = explain_clip(ensemble, path, text, name)
            except UnpredictableClip as exc:
                raise ApiError(422, _unpredictable(exc, text, ensemble), missing=exc.missing) from None
            except Exception as exc:  # noqa: BLE001 - a server-side problem: say so, log it, keep serving
                log.exception("prediction of %s failed", name + suffix)
                raise ApiError(500, f"the server could not predict {name + suffix}: {type(exc).__name__}: {exc} "
                                    f"(see the server log)") from None
            t1 = time.perf_counter()
            try:
                faces = face_crops(path, ensemble.features)
            except Exception:  # noqa: BLE001 - face crops are for display only: never fail the answer
                log.warning("no face crops for %s", name + suffix, exc_info=True)
                faces = []
            faces_seconds = time.perf_counter() - t1
    answer = explained.as_dict()
    stages = {**seconds, **answer["seconds"], "faces": faces_seconds, "total": time.perf_counter() - t0}
    answer["seconds"] = {k: round(v, 4) for k, v in stages.items()}
    answer.update(faces=faces, streams=streams)
    return answer


def _unpredictable(exc: UnpredictableClip, transcript: str | None, ensemble: Ensemble) -> str:
    """The 422 message: the clip's missing modalities, and how to give a missing transcript."""
    text = needs_transcript(ensemble.features)
    hint = ""
    if transcript is None and text and any(ensemble.features[m]["feature"] == text for m in exc.missing):
        hint = f" (the run's text feature {text} needs a transcript: fill in the form field 'transcript')"
    return f"{exc}{hint}"


async def _error_answer(request, exc: ApiError) -> JSONResponse:
    return JSONResponse({"detail": exc.detail, **exc.extra}, status_code=exc.status_code)


def _json_text(obj: Any) -> str:
    """JSON text with non-finite floats (NaN scores in metrics.json) as null."""
    def finite(x: Any) -> Any:
        if isinstance(x, float):
            return x if x == x and abs(x) != float("inf") else None
        if isinstance(x, dict):
            return {k: finite(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [finite(v) for v in x]
        return x

    return json.dumps(finite(obj), ensure_ascii=False)
