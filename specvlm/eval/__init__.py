"""Evaluation harnesses the field uses, answered by speculative decoding.

``lmms_eval_model.SpecVLM`` is lmms-eval's ``--model specvlm``. lmms-eval finds it through the
``lmms_eval.models`` entry point that pyproject.toml declares (lmms-eval 0.7's registration hook;
its older ``LMMS_EVAL_PLUGINS`` variable is deprecated there), which calls ``lmms_eval_models``.
This module stays light: lmms-eval imports it while building its model registry, and the model
class (which imports torch, transformers and lmms-eval itself) loads only when it is asked for.
"""

from __future__ import annotations

MODEL_NAME = "specvlm"
MODEL_CLASS = "specvlm.eval.lmms_eval_model.SpecVLM"


def lmms_eval_models():
    """The entry point's payload: lmms-eval's manifest naming ``--model specvlm``'s class."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_NAME, simple_class_path=MODEL_CLASS)
