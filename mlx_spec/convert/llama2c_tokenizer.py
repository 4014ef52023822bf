"""Read a llama2.c tokenizer (.bin) and write it as tokenizer files mlx-lm loads.

The llama2.c file is a sentencepiece BPE vocabulary exported flat: int32 max_token_length, then
per token float32 score, int32 byte length, the bytes (sentencepiece's "▁" written as a space,
BOS/EOS written as "\\n<s>\\n" / "\\n</s>\\n", bytes as "<0xXX>"). Its encoder (run.c) merges the
adjacent pair whose concatenation scores highest, after prefixing a space: sentencepiece BPE.

We write three files:
- tokenizer.json: a `tokenizers` BPE with byte fallback, merges ranked by the merged piece's
  score (the same order run.c and sentencepiece merge in), "▁" for spaces and the Llama-style
  decoder, which mlx-lm recognises and streams with its SPM detokenizer; BOS is prepended by a
  post-processor.
- tokenizer_config.json: plain PreTrainedTokenizerFast, so transformers uses tokenizer.json as is.
- tokenizer.model: the same vocabulary as a sentencepiece model, for tools that want one.
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

from ..errors import MlxSpecError

UNK, BOS, EOS = "<unk>", "<s>", "</s>"
SPECIAL = {0: UNK, 1: BOS, 2: EOS}  # llama2.c's ids, written under Llama's usual names
SPACE = "▁"


@dataclass
class Llama2cVocab:
    pieces: list[str]     # sentencepiece spelling: "▁" for spaces, "<0x0A>" for byte tokens
    scores: list[float]

    def __len__(self) -> int:
        return len(self.pieces)

    def is_byte(self, i: int) -> bool:
        piece = self.pieces[i]
        return len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">")


def read_llama2c_tokenizer(path: str | Path, vocab_size: int) -> Llama2cVocab:
    """Parse the llama2.c tokenizer; it must hold exactly `vocab_size` tokens (the model's)."""
    path = Path(path)
    data = path.read_bytes()
    bad = f"{path} is not a llama2.c tokenizer"
    if len(data) < 4:
        raise MlxSpecError(f"{bad} (only {len(data)} bytes)")
    (max_len,), offset = struct.unpack_from("<i", data, 0), 4
    if not 0 < max_len < 1 << 16:
        raise MlxSpecError(f"{bad} (max_token_length {max_len})")
    pieces, scores = [], []
    while offset < len(data) and len(pieces) < vocab_size:
        if offset + 8 > len(data):
            raise MlxSpecError(f"{bad} (truncated at token {len(pieces)})")
        score, length = struct.unpack_from("<fi", data, offset)
        offset += 8
        if not 0 <= length <= max_len or offset + length > len(data):
            raise MlxSpecError(f"{bad} (token {len(pieces)} has length {length})")
        raw = data[offset:offset + length]
        offset += length
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise MlxSpecError(f"{bad} (token {len(pieces)} is not UTF-8)") from None
        pieces.append(SPECIAL.get(len(pieces), text.replace(" ", SPACE)))
        scores.append(score)
    if len(pieces) != vocab_size or offset != len(data):
        found = "more" if offset < len(data) else str(len(pieces))
        raise MlxSpecError(f"{path} does not match the checkpoint: the model has {vocab_size} "
                           f"tokens, the tokenizer has {found}")
    if len(set(pieces)) != len(pieces):
        raise MlxSpecError(f"{bad} (duplicate tokens)")
    return Llama2cVocab(pieces, scores)


def bpe_merges(vocab: Llama2cVocab) -> list[tuple[str, str]]:
    """Every way to build a piece from two others, best-scoring merged piece first."""
    index = {piece: i for i, piece in enumerate(vocab.pieces)}
    merges = []
    for i, piece in enumerate(vocab.pieces):
        if i in SPECIAL or vocab.is_byte(i):
            continue
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in index and right in index:
                merges.append((-vocab.scores[i], i, index[left], left, right))
    merges.sort()
    return [(left, right) for *_, left, right in merges]


def write_tokenizer(vocab: Llama2cVocab, out: Path) -> None:
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, processors

    ids = {piece: i for i, piece in enumerate(vocab.pieces)}
    fast = Tokenizer(models.BPE(vocab=ids, merges=bpe_merges(vocab), unk_token=UNK,
                                fuse_unk=True, byte_fallback=True))
    # sentencepiece's dummy prefix, then spaces as "▁". A normalizer rather than the Metaspace
    # pre-tokenizer, which skips the prefix when the text already starts with a space
    fast.normalizer = normalizers.Sequence([normalizers.Prepend(SPACE),
                                            normalizers.Replace(" ", SPACE)])
    # exactly the decoder mlx-lm matches to pick its SPM streaming detokenizer; the Strip drops
    # the dummy-prefix space, as run.c does for the piece after BOS
    fast.decoder = decoders.Sequence([decoders.Replace(SPACE, " "), decoders.ByteFallback(),
                                      decoders.Fuse(), decoders.Strip(content=" ", left=1)])
    fast.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in SPECIAL.values()])
    fast.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, ids[BOS])])
    fast.save(str(out / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": BOS, "eos_token": EOS,
              "unk_token": UNK, "add_bos_token": True, "add_eos_token": False,
              "clean_up_tokenization_spaces": False, "model_max_length": 1 << 30}
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": BOS, "eos_token": EOS, "unk_token": UNK}, indent=2) + "\n")
    (out / "tokenizer.model").write_bytes(sentencepiece_model(vocab))


def sentencepiece_model(vocab: Llama2cVocab) -> bytes:
    """The vocabulary as a sentencepiece BPE model (identity normalisation, dummy prefix, byte
    fallback), the same settings as Llama's tokenizer.model."""
    from sentencepiece import sentencepiece_model_pb2 as spm_pb2

    proto = spm_pb2.ModelProto()
    kinds = spm_pb2.ModelProto.SentencePiece
    for i, (piece, score) in enumerate(zip(vocab.pieces, vocab.scores)):
        kind = (kinds.UNKNOWN if i == 0 else kinds.CONTROL if i in SPECIAL
                else kinds.BYTE if vocab.is_byte(i) else kinds.NORMAL)
        proto.pieces.add(piece=piece, score=score, type=kind)
    trainer = proto.trainer_spec
    trainer.model_type = spm_pb2.TrainerSpec.BPE
    trainer.vocab_size = len(vocab)
    trainer.byte_fallback = True
    trainer.unk_id, trainer.bos_id, trainer.eos_id, trainer.pad_id = 0, 1, 2, -1
    normalizer = proto.normalizer_spec
    normalizer.name = "identity"
    normalizer.add_dummy_prefix = True
    normalizer.remove_extra_whitespaces = False
    normalizer.escape_whitespaces = True
    return proto.SerializeToString()
