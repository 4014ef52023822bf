"""Train a sentencepiece tokenizer and write it as files mlx-lm's tokenizer loading understands.

We ship both the sentencepiece model (tokenizer.model, the LlamaTokenizer format) and its
transformers "fast" export (tokenizer.json), so `mlx_lm.load` needs no conversion at load time.
Newlines are kept as a piece of their own: stories have paragraphs, and the default sentencepiece
normalisation would fold them into spaces.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

from ..errors import MlxSpecError

BOS, EOS, UNK = "<s>", "</s>", "<unk>"
MIN_VOCAB = 256 + 4  # byte fallback's pieces, unk / bos / eos, and the newline piece


def train_tokenizer(texts: list[str], out_dir: str | Path, vocab_size: int = 4096,
                    max_sentences: int = 200_000) -> Path:
    import sentencepiece as spm

    if vocab_size < MIN_VOCAB:
        raise MlxSpecError(f"vocab_size must be >= {MIN_VOCAB} (256 byte pieces and the special "
                           f"ones), got {vocab_size}")
    out = Path(out_dir)
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(texts[:max_sentences]), model_writer=model,
            model_type="bpe", vocab_size=vocab_size, byte_fallback=True,
            character_coverage=0.9999, normalization_rule_name="identity",
            remove_extra_whitespaces=False, split_digits=True, user_defined_symbols=["\n"],
            unk_id=0, bos_id=1, eos_id=2, pad_id=-1, max_sentence_length=1 << 16,
            num_threads=2, minloglevel=2,
        )
    except RuntimeError as exc:  # its own complaint's last line, e.g. "Vocabulary size too high"
        lines = str(exc).strip().splitlines() or [type(exc).__name__]
        raise MlxSpecError(f"sentencepiece: {lines[-1]}") from None
    out.mkdir(parents=True, exist_ok=True)  # (only once there is a tokenizer to write in it)
    (out / "tokenizer.model").write_bytes(model.getvalue())
    export_for_transformers(out)
    return out


def _bpe_merges(vocab: dict[str, int]) -> list[tuple[str, str]]:
    """Recover BPE merges from a sentencepiece BPE vocabulary: a piece is the merge of any two
    pieces that concatenate to it, and lower ids were merged earlier."""
    merges = []
    for piece, piece_id in vocab.items():
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in vocab and right in vocab:
                merges.append((piece_id, vocab[left], vocab[right], left, right))
    merges.sort()
    return [(left, right) for *_, left, right in merges]


def export_for_transformers(folder: Path) -> None:
    """Write tokenizer.json + tokenizer_config.json next to tokenizer.model (Llama conventions:
    Metaspace with a prefix space on the first word, byte fallback, BOS prepended)."""
    import sentencepiece as spm
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    sp = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    vocab = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}
    fast = Tokenizer(models.BPE(vocab=vocab, merges=_bpe_merges(vocab), unk_token=UNK,
                                fuse_unk=True, byte_fallback=True))
    fast.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first",
                                                  split=False)
    fast.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                      decoders.Fuse(), decoders.Strip(content=" ", left=1)])
    fast.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in (UNK, BOS, EOS)])
    fast.add_tokens([AddedToken("\n", normalized=False, special=False)])
    fast.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, sp.bos_id())])
    wrapper = PreTrainedTokenizerFast(tokenizer_object=fast, bos_token=BOS, eos_token=EOS,
                                      unk_token=UNK, model_max_length=2048)
    wrapper.save_pretrained(str(folder))
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config.update(add_bos_token=True, add_eos_token=False, tokenizer_class="LlamaTokenizerFast")
    config_path.write_text(json.dumps(config, indent=2))
