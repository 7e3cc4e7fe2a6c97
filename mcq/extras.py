"""Optional dependencies, each installed by a named extra of the package (pyproject.toml):

    gguf        GGUF model files, e.g. the smollm2 example: gguf, and accelerate, which
                transformers needs to load one
    accelerate  `mcq quantize --stream` / mcq.quantize_streaming (the model built on the meta device)
    matplotlib  `mcq report --png`
    chat        jinja2, for the runtime's Model.chat (runtime.chat names the extra itself: the
                runtime does not import mcq)
    serve       starlette and uvicorn, for `mcq serve` (runtime.server names the extra itself)

A missing one fails where it is first needed with the extra to install, not with a bare
ImportError from deep inside transformers.
"""
from __future__ import annotations

import importlib
from types import ModuleType

# module -> the extra that installs it
EXTRA_OF = {"gguf": "gguf", "accelerate": "accelerate", "matplotlib": "matplotlib"}


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message names the extra that installs it."""


def require(module: str, needed_for: str, extra: str | None = None) -> ModuleType:
    """Import `module`, or raise MissingExtraError saying what needs it and `pip install "mcq[EXTRA]"`."""
    extra = extra or EXTRA_OF[module]
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingExtraError(f"{needed_for} needs {module}, which is not installed ({e}): "
                                f'pip install "mcq[{extra}]"') from None
