"""semimer serve --run RUN [--host 127.0.0.1] [--port 7860] [--max-upload-mb 50] [--max-seconds 60]"""

from __future__ import annotations

import argparse

HELP = "serve a web page and a JSON API that predict uploaded clips with a trained run"

EPILOG = """\
The page (http://HOST:PORT/) takes a video or audio file and an optional transcript and shows the
predicted emotion, a bar per class, each modality's fusion weight or head prediction, face crops,
the time of each stage, and the run's scores, plots and report.
JSON API:
  POST /api/predict   multipart: file, transcript (optional) -> {name, discrete, probs, modalities, seconds, ...}
  GET  /api/health    GET /api/run    (interactive API docs: /docs)
The run's models are loaded once; requests are predicted one at a time; uploads live in a temporary
folder removed after each request; the run folder is only read. Binds to 127.0.0.1 unless --host
says otherwise (0.0.0.0 lets every machine that reaches this one upload files).
examples:
  semimer serve --run runs/attention
  curl -F file=@clip.mp4 -F transcript="我今天很开心" http://127.0.0.1:7860/api/predict
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.epilog = EPILOG
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--run", required=True, help="run folder of `semimer train` / `semimer recipe`")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port (default: 7860)")
    p.add_argument("--max-upload-mb", type=float, default=50.0, help="largest upload accepted, in MB (default: 50)")
    p.add_argument("--max-seconds", type=float, default=60.0, help="longest clip accepted, in seconds (default: 60)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:i]")


def run(args: argparse.Namespace) -> int:
    import socket

    from semimer.infer.inputs import check_reextractable
    from semimer.infer.predict import read_run_features
    from semimer.utils import log

    features = read_run_features(args.run)  # a missing run or features.json fails before anything heavy
    check_reextractable(args.run, features)
    if not 0 < args.port < 65536:
        raise ValueError(f"--port {args.port} is not a port number (1-65535)")
    try:
        import uvicorn

        from semimer.serve import create_app
    except ImportError as exc:
        raise ValueError(f"semimer serve needs the serve extra ({exc.name} is missing): "
                         f"pip install 'semimer[serve]'") from None
    app = create_app(args.run, device=args.device, max_upload_mb=args.max_upload_mb, max_seconds=args.max_seconds)
    try:  # a clear message rather than uvicorn's log line and exit
        with socket.create_server((args.host, args.port)):
            pass
    except OSError as exc:
        raise ValueError(f"cannot listen on {args.host}:{args.port} ({exc.strerror or exc}); "
                         f"pick another --port or stop the program that uses it") from None
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("listening on %s: every machine that reaches this one can upload files to the server", args.host)
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"semimer serve: run {args.run} on http://{host}:{args.port}/  (Ctrl+C stops)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info" if args.verbose else "warning")
    return 0
