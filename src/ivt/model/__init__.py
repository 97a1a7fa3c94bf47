"""The IVT encoder: one transformer for image patches and text tokens."""
from __future__ import annotations

from ivt.model.checkpoint_io import (
    CheckpointError,
    check_state_dict,
    load_state_dict_strict,
    read_state_dict,
)
from ivt.model.config import MODEL_SIZES, EncoderConfig, model_config
from ivt.model.encoder import IVTEncoder
from ivt.model.official import (
    adapt_official,
    encoder_state_shapes,
    infer_official_config,
    load_official_encoder,
)
from ivt.model.token_drop import TOKEN_DROP_MODES, TokenDrop, TokenDropResult, drop_tokens

__all__ = [
    "IVTEncoder", "EncoderConfig", "model_config", "MODEL_SIZES",
    "load_official_encoder", "adapt_official", "infer_official_config",
    "encoder_state_shapes", "CheckpointError", "check_state_dict", "load_state_dict_strict",
    "read_state_dict", "drop_tokens", "TokenDrop", "TokenDropResult", "TOKEN_DROP_MODES",
]
