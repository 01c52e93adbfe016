"""A byte-level tokenizer built locally: token id == byte value, plus a few specials.

Built with the ``tokenizers`` library (no download) and wrapped as a ``PreTrainedTokenizerFast`` so
that transformers and auto-round can use it like any Hub tokenizer. Mapping id to byte directly
means the training loop can tokenize with ``bytes`` alone, and the tokenizer is only needed by
libraries that insist on one.
"""

from __future__ import annotations

from functools import lru_cache

NUM_BYTES = 256
SPECIALS = ("<|endoftext|>", "<|pad|>", "<|bos|>", "<|unk|>")
VOCAB_SIZE = NUM_BYTES + len(SPECIALS)


def special_token_ids() -> dict[str, int]:
    return {"eos": NUM_BYTES, "pad": NUM_BYTES + 1, "bos": NUM_BYTES + 2, "unk": NUM_BYTES + 3}


@lru_cache(maxsize=1)
def _byte_to_unicode() -> dict[int, str]:
    """The GPT-2 byte-to-printable-character table that the ByteLevel pre-tokenizer uses."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1)
    )
    table: dict[int, str] = {}
    extra = 0
    for b in range(NUM_BYTES):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(NUM_BYTES + extra)
            extra += 1
    return table


def build_tokenizer():
    """A ``PreTrainedTokenizerFast`` whose ids are raw bytes (0..255) followed by the specials."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {char: byte for byte, char in _byte_to_unicode().items()}
    for offset, token in enumerate(SPECIALS):
        vocab[token] = NUM_BYTES + offset
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None, byte_fallback=False))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens(list(SPECIALS))
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        eos_token=SPECIALS[0],
        pad_token=SPECIALS[1],
        bos_token=SPECIALS[2],
        unk_token=SPECIALS[3],
        model_max_length=1 << 20,
    )
