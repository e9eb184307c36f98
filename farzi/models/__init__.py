"""The model zoo: name -> (class, config class)."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from farzi.errors import ConfigError
from farzi.models.base import (
    NEG_INF,
    ModelConfig,
    SequenceModel,
    count_parameters,
    next_token_loss,
    padding_mask,
)
from farzi.models.fmlp import FMLPRec, FMLPRecConfig
from farzi.models.gru4rec import GRU4Rec, GRU4RecConfig
from farzi.models.loss import (
    CHUNK_ELEMENTS,
    chunk_positions,
    features_next_token_loss,
    functional_loss,
    linear_cross_entropy,
    score_targets,
)
from farzi.models.rnn_lm import RNNLM, RNNLMConfig
from farzi.models.sasrec import SASRec, SASRecConfig
from farzi.models.sparse import SparseDist
from farzi.models.transformer_lm import TransformerLM, TransformerLMConfig

MODELS: dict[str, tuple[type[SequenceModel], type[ModelConfig]]] = {
    "sasrec": (SASRec, SASRecConfig),
    "gru4rec": (GRU4Rec, GRU4RecConfig),
    "fmlp": (FMLPRec, FMLPRecConfig),
    "transformer": (TransformerLM, TransformerLMConfig),
    "rnn": (RNNLM, RNNLMConfig),
}
DEFAULT_MODEL = {"rec": "sasrec", "lm": "transformer"}
# model settings that have command-line options of their own (--max-len, ...): type and help
MODEL_OPTIONS: dict[str, tuple[type, str]] = {
    "max_len": (int, "Model context length (default: the model's)."),
    "d_model": (int, "Model width (default: the model's)."),
    "n_layers": (int, "Number of layers (default: the model's)."),
    "n_heads": (int, "Attention heads (Transformer models)."),
    "dropout": (float, "Dropout rate (default: the model's)."),
}


def model_task(name: str) -> str:
    return model_class(name)[0].task


def model_class(name: str) -> tuple[type[SequenceModel], type[ModelConfig]]:
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}", f"choose one of: {', '.join(MODELS)}")
    return MODELS[name]


def make_config(name: str, vocab_size: int, **overrides: Any) -> ModelConfig:
    """A model's default config for ``vocab_size``, with ``overrides`` applied (None = default)."""
    _, cfg_cls = model_class(name)
    cfg = cfg_cls(vocab_size=vocab_size)
    for key, value in overrides.items():
        if value is None:
            continue
        if key not in {f.name for f in fields(cfg)}:
            raise ConfigError(f"model {name!r} has no setting {key!r}", "drop that option for this model")
        try:
            setattr(cfg, key, type(getattr(cfg, key))(value))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"model {name!r}: bad value {value!r} for {key!r} ({exc})", "give a valid value") from exc
    return cfg


def build_model(name: str, config: ModelConfig | dict[str, Any]) -> SequenceModel:
    cls, cfg_cls = model_class(name)
    if isinstance(config, dict):
        try:
            config = cfg_cls.from_dict(config)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"invalid config for model {name!r}: {exc}", "use the config farzictl wrote") from exc
    try:
        return cls(config)
    except (TypeError, ValueError) as exc:  # e.g. n_heads not dividing d_model, unknown rnn cell
        raise ConfigError(f"invalid config for model {name!r}: {exc}", "fix that setting") from exc


__all__ = [
    "CHUNK_ELEMENTS",
    "MODELS",
    "DEFAULT_MODEL",
    "NEG_INF",
    "ModelConfig",
    "SequenceModel",
    "SparseDist",
    "build_model",
    "make_config",
    "model_class",
    "model_task",
    "next_token_loss",
    "features_next_token_loss",
    "functional_loss",
    "linear_cross_entropy",
    "chunk_positions",
    "score_targets",
    "padding_mask",
    "count_parameters",
]
