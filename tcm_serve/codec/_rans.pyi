# Type stub of the C extension tcm_serve/codec/_rans.c (the rANS coder): what mypy checks
# tcm_serve/codec/rans.py against. Arrays are C-contiguous; the C code checks dtypes.
import numpy as np

PRECISION: int

def encode(
    symbols: np.ndarray, indexes: np.ndarray, cdfs: np.ndarray, cdf_lengths: np.ndarray, offsets: np.ndarray
) -> bytes: ...
def quantize_cdf(pmf: np.ndarray, /) -> bytes: ...

class Decoder:
    def __init__(self, data: bytes) -> None: ...
    def decode(
        self, indexes: np.ndarray, cdfs: np.ndarray, cdf_lengths: np.ndarray, offsets: np.ndarray, out: np.ndarray
    ) -> None: ...
    @property
    def remaining(self) -> int: ...
    @property
    def finished(self) -> bool: ...
