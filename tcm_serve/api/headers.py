"""The response headers the codec routes add, by name: one home for the service that writes
them, the OpenAPI schema that documents them and the Python client that reads them (this
module imports nothing, so the client stays free of FastAPI and torch)."""

from __future__ import annotations

QUALITY = "X-TCM-Quality"
BPP = "X-TCM-Bpp"
WIDTH = "X-TCM-Width"
HEIGHT = "X-TCM-Height"
#: 2: portable, 1: exact (docs/format.md).
FORMAT_VERSION = "X-TCM-Format-Version"
#: The encoder effort the blob was made with (nothing in the blob records it).
EFFORT = "X-TCM-Effort"

#: What ``POST /compress`` answers with, and ``POST /decompress``.
COMPRESS_HEADERS = (QUALITY, BPP, WIDTH, HEIGHT, FORMAT_VERSION, EFFORT)
DECOMPRESS_HEADERS = (QUALITY, WIDTH, HEIGHT)
