"""Build hook for the C range coder (tcm_serve.codec._rans).

Everything else lives in pyproject.toml; setuptools still needs setup.py to declare a
C extension portably across its versions.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "tcm_serve.codec._rans",
            sources=["tcm_serve/codec/_rans.c"],
            extra_compile_args=["-O3", "-std=c99"],
        )
    ]
)
