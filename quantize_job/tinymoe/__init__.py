"""A tiny Mixture-of-Experts causal LM that is trained here, from text on the machine.

No model can be downloaded in this project's test and benchmark environments, yet the quantizers
must be judged on a *real* language model (random weights have no structure for calibration to
exploit). This package builds one: a Hugging Face ``Qwen2MoeForCausalLM`` (routed experts with top-k
routing, a shared expert with its sigmoid gate, the router ``mlp.gate``) with a byte-level
tokenizer, trained for a few minutes on the Python standard library's own sources, with a held-out
set of files it never sees. Because it is an ordinary transformers model, the quantization engine
and auto-round treat it exactly as they treat a real checkpoint.
"""

from dedicated.quantize_job.tinymoe.config import PRESETS, tiny_moe_config
from dedicated.quantize_job.tinymoe.corpus import Corpus, build_corpus, load_corpus
from dedicated.quantize_job.tinymoe.tokenizer import build_tokenizer

__all__ = ["PRESETS", "Corpus", "build_corpus", "build_tokenizer", "load_corpus", "tiny_moe_config"]
