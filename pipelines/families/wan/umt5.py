"""The Wan UMT5 text side as ai-toolkit loads it: which repo it comes from, and the tokenizer it builds.

What ai-toolkit 0.12.26 (27a03a91) does (`toolkit/models/wan21/wan21.py:Wan21.load_model`,
`toolkit/models/loaders/umt5.py:get_umt5_encoder`), with transformers 5.5.3 (its pin):
- The encoder and tokenizer come from `<base>/text_encoder` and `<base>/tokenizer` only when the base is a local
  folder that has `text_encoder/`; otherwise (a Hub id, as every UI preset is) from `ai-toolkit/umt5_xxl_encoder`
  (`UMT5_REPO`), never from the Wan repo. The transformer and VAE still come from the base.
- The tokenizer is `PatchedT5Tokenizer.from_pretrained(path, subfolder="tokenizer")`: transformers 5's `T5Tokenizer`
  rebuilt from the vocabulary in `tokenizer.json` (Unigram, unk id 2, no byte fallback; pre-tokenizer whitespace
  split then Metaspace "▁" prepended always; `</s>` appended) with `_spm_precompiled_charsmap=None`: the
  SentencePiece normalizer (NFKC and whitespace folding) is dropped. So "…" stays "…" (the stock tokenizer reads
  "..."), "™" stays "™", and so on; Diffusers' `prompt_clean` (ftfy, HTML unescape, whitespace) still runs first.

`aitk_tokenizer` builds that tokenizer with the `tokenizers` library directly, so it is the same whichever
transformers version ComfyUI has (transformers 4's `T5Tokenizer` is a different, SentencePiece-based class).
"""
from __future__ import annotations

import json
import os

UMT5_REPO = "ai-toolkit/umt5_xxl_encoder"
_EXTRA_IDS = 100  # T5Tokenizer's default `extra_ids` when the tokenizer config names none


def text_folder(source) -> str | None:
    """The local base folder that holds ai-toolkit's UMT5 (`text_encoder/` inside it), or None: then ai-toolkit
    reads it from `UMT5_REPO`."""
    if source.kind == "diffusers" and os.path.isdir(os.path.join(source.location, "text_encoder")):
        return source.location
    return None


def _vocab(folder: str) -> list[tuple[str, float]]:
    path = os.path.join(folder, "tokenizer.json")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            model = json.load(f).get("model", {})
        if model.get("type") != "Unigram":
            raise ValueError(f"{path} holds a {model.get('type')} model, not UMT5's Unigram")
        return [(str(piece), float(score)) for piece, score in model["vocab"]]
    spiece = os.path.join(folder, "spiece.model")
    if not os.path.isfile(spiece):
        raise FileNotFoundError(f"{folder} has neither tokenizer.json nor spiece.model")
    import sentencepiece  # only for a tokenizer folder without tokenizer.json

    processor = sentencepiece.SentencePieceProcessor(model_file=spiece)
    return [(processor.id_to_piece(i), float(processor.get_score(i))) for i in range(processor.get_piece_size())]


def aitk_tokenizer(folder: str):
    """The tokenizer of the `tokenizer` folder `folder` as `PatchedT5Tokenizer` builds it (see the module doc)."""
    from tokenizers import Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import Unigram
    from transformers import PreTrainedTokenizerFast

    config = {}
    config_path = os.path.join(folder, "tokenizer_config.json")
    if os.path.isfile(config_path):
        with open(config_path, encoding="utf-8") as f:
            config = json.load(f)

    def token(name, default):
        value = config.get(name, default)
        return value.get("content", default) if isinstance(value, dict) else value

    eos, unk, pad = token("eos_token", "</s>"), token("unk_token", "<unk>"), token("pad_token", "<pad>")
    extra = config.get("additional_special_tokens") or config.get("extra_special_tokens")
    if not extra:
        extra = [f"<extra_id_{i}>" for i in range(config.get("extra_ids", _EXTRA_IDS))]
    backend = Tokenizer(Unigram(_vocab(folder), unk_id=2, byte_fallback=False))  # no normalizer, on purpose
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(),
        pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always", split=True)])
    backend.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always", split=True)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=eos, unk_token=unk, pad_token=pad,
                                        additional_special_tokens=list(extra),
                                        model_max_length=config.get("model_max_length", 512))
    eos_id = tokenizer.convert_tokens_to_ids(eos)
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=["$A", eos], pair=["$A", eos, "$B", eos], special_tokens=[(eos, eos_id)])
    return tokenizer


def load_text_parts(source) -> dict:
    """{"text_encoder", "tokenizer"} where ai-toolkit reads them for this base (see the module doc)."""
    from transformers import UMT5EncoderModel

    from ...sources import hub_snapshot

    folder = text_folder(source) or hub_snapshot(UMT5_REPO)
    encoder = UMT5EncoderModel.from_pretrained(folder, subfolder="text_encoder", local_files_only=True)
    return {"text_encoder": encoder, "tokenizer": aitk_tokenizer(os.path.join(folder, "tokenizer"))}
