"""mlx-spec: lossless speculative decoding for mlx-lm models."""
import os as _os

# transformers (used by mlx-lm's tokenizer loading) prints advisory warnings that are noise for
# users of a CLI; real failures still reach them as exceptions.
_os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
_os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

from . import blas as _blas, gpu_env as _gpu_env  # noqa: E402

_gpu_env.apply()  # before mlx's first GPU operation
_blas.ensure()  # must run before the first `import mlx.core`
if _blas.late:
    import mlx.core as _mx  # (imported already: that is what `late` says)
    import warnings as _warnings

    if _mx.default_device() == _mx.cpu:  # (a GPU's forward does not run on the BLAS)
        _warnings.warn(_blas.LATE, RuntimeWarning, stacklevel=2)

__version__ = "0.1.0"

from .api import GenerationChunk, GenerationResult, generate, make_decoder, stream_generate  # noqa: E402
from .errors import MlxSpecError  # noqa: E402
from .loading import SpecModel, load  # noqa: E402

__all__ = ["load", "generate", "stream_generate", "make_decoder", "SpecModel", "GenerationChunk",
           "GenerationResult", "MlxSpecError", "__version__"]
