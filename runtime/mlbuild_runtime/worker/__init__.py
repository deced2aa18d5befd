"""The model worker: runs in the model env's interpreter. STANDARD LIBRARY ONLY.

The server loads this directory as a package named ``mlbuild_worker`` (see launch.py), so every
module here uses relative imports only and imports nothing at package import time.
"""
