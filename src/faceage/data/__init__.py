"""Face datasets: readers for each dataset's labels, image decoding, the prepared cache and its loader.

``faceage prepare`` turns a dataset folder into a cache (``faceage.data.prepare``); training reads it
through ``faceage.data.loader``. Importing this package is cheap: torch is only needed by the loader.
"""
