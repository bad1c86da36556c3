"""``semimer serve``: a web page and a JSON API for a trained run.

:mod:`~semimer.serve.app` is the FastAPI application (routes, the prediction lock, the upload size
limit); :mod:`~semimer.serve.uploads` turns an upload into a safe temporary file the decoder has
accepted; :mod:`~semimer.serve.run_view` is what the page shows about the run;
:mod:`~semimer.serve.faces` makes the face crops the page shows. Prediction itself is
:func:`semimer.infer.explain.explain_clip`, the code path of ``semimer predict``. The page is
``static/`` (plain HTML, CSS and JavaScript; no build step).

Library use (needs ``pip install 'semimer[serve]'``)::

    import uvicorn
    from semimer.serve import create_app
    uvicorn.run(create_app("runs/attention"), host="127.0.0.1", port=7860)
"""

from semimer.serve.app import create_app

__all__ = ["create_app"]
