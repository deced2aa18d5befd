"""mlbuild's model server: a FastAPI server (server env) over isolated model workers (model env).

This package never imports ``mlbuild`` (the builder) or jinja2: it is baked into every image.
``mlbuild_runtime.worker`` is standard-library only, because it runs in the model's interpreter.
"""

__version__ = "0.1.0"
