"""``faceage web``: a Gradio page over the same inference core as the CLI and the API, for this computer only.

``faceage.web.engine`` does the work (limits, uploads in memory, methods, ageing) without Gradio;
``faceage.web.render`` draws the views as HTML with inline images; ``faceage.web.app`` is the page and
``start()``; ``faceage.web.bench`` measures it under load (``faceage bench web``). Gradio is the optional
``faceage[web]`` extra, imported only by ``faceage.web.app``.
"""

# The limits of one request, defaults of both ``faceage web`` and ``faceage.web.engine.Limits`` (kept here, in a
# module that imports nothing, so the CLI's --help stays instant).
MAX_UPLOAD_MB = 20.0
MAX_MEGAPIXELS = 25.0  # a session's photo is held in memory: 75 MB at this size
TIMEOUT_S = 60.0
