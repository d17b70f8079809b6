"""Training of small real-architecture target/draft pairs on the synthetic video task.

:mod:`specvlm.training.train_pair` builds a byte-level BPE tokenizer and a LLaVA-OneVision processor
offline, trains a ~12M-parameter ``LlavaOnevisionForConditionalGeneration`` target on
:mod:`specvlm.synthetic` clips (answer tokens only), then a ~2.5M-parameter draft of the same
family, on the task and distilled from the target's next-token distribution, and saves both with
``save_pretrained`` so that they load through ``AutoModelForImageTextToText`` / ``AutoProcessor``::

    python -m specvlm.training.train_pair --out runs/shapes --device cuda
"""
