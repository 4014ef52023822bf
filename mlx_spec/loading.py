"""Finding and loading models: the embedded defaults, local mlx-lm folders, and hub ids.

Loading goes through mlx-lm's own loader so any model mlx-lm runs loads the same way here; what
this module adds is one-line errors for the ways a model folder can be wrong, and fp32 compute on
the CPU backend (16-bit matmuls on the CPU do not use BLAS and are several times slower).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Optional

import mlx.core as mx

from .errors import ModelLoadError

DEFAULT_TARGET = "tinystories-target"
DEFAULT_DRAFT = "tinystories-draft"


def shipped_models_dir() -> Path:
    return Path(str(resources.files("mlx_spec.models")))


def shipped_model(name: str) -> Optional[Path]:
    path = shipped_models_dir() / name
    return path if (path / "config.json").exists() else None


# the target's shape as its config states it: a head or draft model made for one model fits every
# copy of it (fp16, 8-bit), and the same shape with another vocabulary or depth never matches
SIGNATURE_FIELDS = ("model_type", "vocab_size", "hidden_size", "num_hidden_layers",
                    "intermediate_size", "num_attention_heads", "num_key_value_heads")
COMPANION_FILE = "target.json"  # in a shipped head / draft folder: {"role", "target", "signature"}


def target_signature(config: dict) -> str:
    text = json.dumps({k: config.get(k) for k in SIGNATURE_FIELDS}, sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def weights_fingerprint(model_path: str) -> str:
    """Identifies a model folder's weights without reading all of them (names, sizes and the first
    MiB of each weights file and config.json)."""
    digest = hashlib.sha1()
    folder = Path(model_path)
    for file in sorted(folder.glob("*.safetensors")) + [folder / "config.json"]:
        if file.exists():
            digest.update(file.name.encode())
            digest.update(str(file.stat().st_size).encode())
            with open(file, "rb") as handle:
                digest.update(handle.read(1 << 20))
    return digest.hexdigest()[:16]


def write_companion(folder: Path, role: str, target_name: str, config: dict) -> None:
    """Mark `folder` as made for the target with `config` (found by shipped_companion)."""
    record = {"role": role, "target": target_name, "signature": target_signature(config)}
    (Path(folder) / COMPANION_FILE).write_text(json.dumps(record, indent=2) + "\n")


def shipped_companion(config: dict, role: str) -> Optional[Path]:
    """The shipped folder of `role` ("redrafter-head", "draft-model") made for this target."""
    signature = target_signature(config)
    for folder in sorted(shipped_models_dir().iterdir()):
        marker = folder / COMPANION_FILE
        if marker.exists():
            record = json.loads(marker.read_text())
            if record.get("role") == role and record.get("signature") == signature:
                return folder
    return None


def resolve(path_or_id: Optional[str]) -> str:
    """None -> the embedded target; a shipped model's name -> its folder; a folder -> itself;
    'org/name' that is not a folder -> a hub id for mlx-lm to download."""
    if path_or_id is None:
        path_or_id = DEFAULT_TARGET
    if not str(path_or_id).strip():  # (Path("") is the current folder)
        raise ModelLoadError("the model is empty: give an mlx-lm folder or a hub id")
    shipped = shipped_model(str(path_or_id))
    if shipped is not None:
        return str(shipped)
    path = Path(path_or_id).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelLoadError(f"{path} is a file; a model is a folder with config.json and *.safetensors")
        return str(path)
    text = str(path_or_id)
    if text.count("/") == 1 and not text.startswith((".", "/", "~")):
        return text
    raise ModelLoadError(f"model folder not found: {text}")


def _check_folder(folder: Path) -> dict:
    config_file = folder / "config.json"
    if not config_file.exists():
        raise ModelLoadError(f"{folder} is not an mlx-lm model folder (no config.json)")
    try:
        config = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"{config_file} is not valid JSON ({exc.msg if hasattr(exc, 'msg') else exc})") from None
    if not isinstance(config, dict) or "model_type" not in config:
        raise ModelLoadError(f"{config_file} has no model_type")
    if not list(folder.glob("*.safetensors")):
        raise ModelLoadError(f"{folder} has no *.safetensors weights")
    return config


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def compute_on_cpu() -> bool:
    return not (mx.metal.is_available() or (hasattr(mx, "cuda") and mx.cuda.is_available()))


def load_mlx_lm(path_or_id: Optional[str]):
    """Returns (model, tokenizer, config, resolved path) or raises ModelLoadError."""
    from mlx_lm.utils import load as mlx_lm_load

    where = resolve(path_or_id)
    if Path(where).exists():
        _check_folder(Path(where))
    try:
        model, tokenizer, config = mlx_lm_load(where, return_config=True)
    except ModelLoadError:
        raise
    except Exception as exc:  # mlx-lm raises many types; the user needs one line
        if not Path(where).exists():
            raise ModelLoadError(f"could not fetch {where!r} from the Hugging Face hub: "
                                 f"{_first_line(exc)}") from None
        raise ModelLoadError(f"could not load the model in {where}: {_first_line(exc)}") from None
    if compute_on_cpu():
        _to_float32(model)
    return model, tokenizer, config, where


def _to_float32(model) -> None:
    from mlx.utils import tree_flatten, tree_unflatten

    params = tree_flatten(model.parameters())
    if any(v.dtype in (mx.float16, mx.bfloat16) for _, v in params):
        model.update(tree_unflatten([(k, v.astype(mx.float32) if v.dtype in (mx.float16, mx.bfloat16)
                                      else v) for k, v in params]))
        mx.eval(model.parameters())


@dataclass
class SpecModel:
    """A loaded target: the mlx-lm module and tokenizer, plus what methods load beside it."""
    model: object
    tokenizer: object
    config: dict
    path: str
    extras: Optional[object] = None  # drafters.shared.Shared: what drafters load and learn beside it

    @property
    def context_length(self) -> Optional[int]:
        value = self.config.get("max_position_embeddings")
        return int(value) if value else None

    @property
    def vocab_size(self) -> Optional[int]:
        """Token ids the model can embed (0..vocab_size-1), from its config (a multimodal
        config's text_config), or None where neither says."""
        for config in (self.config, self.config.get("text_config") or {}):
            value = config.get("vocab_size") if isinstance(config, dict) else None
            if value:
                return int(value)
        return None

    @property
    def eos_token_ids(self) -> frozenset:
        return frozenset(getattr(self.tokenizer, "eos_token_ids", None) or
                         ([self.tokenizer.eos_token_id] if self.tokenizer.eos_token_id is not None else []))


def load(path: Optional[str] = None) -> SpecModel:
    model, tokenizer, config, where = load_mlx_lm(path)
    return SpecModel(model=model, tokenizer=tokenizer, config=config, path=where)
