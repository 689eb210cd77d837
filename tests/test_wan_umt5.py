"""Wan's UMT5 text side as ai-toolkit loads it (`pipelines/families/wan/umt5.py`): the tokenizer without the
SentencePiece normalizer (ai-toolkit's PatchedT5Tokenizer), and the encoder + tokenizer from
`ai-toolkit/umt5_xxl_encoder` for a Hub base.

The tiny Wan model's tokenizer is saved here as a real UMT5 tokenizer folder is (tokenizer.json with a `Precompiled`
NFKC normalizer, from a SentencePiece model trained offline). The independent reference for the tokenizer is what
ai-toolkit's class does under transformers 5: `T5Tokenizer.from_pretrained` (which rebuilds the backend from the
vocabulary) with the precompiled charsmap left out; for the pictures, tests/reference_wan.py.
"""
from __future__ import annotations

import os
import shutil

import pytest
import torch
from transformers import AutoTokenizer

from tests import reference_wan as ref
from tests.fixtures import tiny_wan
from tests.fixtures.fake_hub import fake_hub_repo
from tests.fixtures.pixels import levels, same

from aitk_pack.pipelines import engine
from aitk_pack.pipelines.cache import CACHE
from aitk_pack.pipelines.errors import ModelSourceError
from aitk_pack.pipelines.families.wan.umt5 import UMT5_REPO, aitk_tokenizer
from aitk_pack.pipelines.sources import ModelRoots

SMALL = dict(width=64, height=64, steps=2, seed=7, guidance_scale=4.0, num_frames=5)
# "…" and "½" are changed by NFKC ("...", "1⁄2"), ftfy leaves them; the rest must tokenize alike either way
TEXTS = ["a red fox running in the snow", "a fox\u2026 in  the\tsnow\n", "\u00bd a fox, <extra_id_0> x", ""]
PROMPT = "a red fox\u2026 running in the snow"


patched_t5 = ref.patched_t5_tokenizer


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """wan21_1b with a UMT5-style tokenizer; and a copy whose UMT5 is wan21_14b's (other weights)."""
    root = tmp_path_factory.mktemp("wan_umt5")
    one = str(root / "diffusers" / "tiny-wan21_1b")
    tiny_wan.save("wan21_1b", one)
    shutil.rmtree(os.path.join(one, "tokenizer"))
    tiny_wan.save_umt5_style_tokenizer(os.path.join(one, "tokenizer"))
    other = str(root / "other")
    tiny_wan.save("wan21_14b", other)
    shutil.rmtree(os.path.join(other, "tokenizer"))
    shutil.copytree(os.path.join(one, "tokenizer"), os.path.join(other, "tokenizer"))
    mixed = str(root / "diffusers" / "mixed")  # what ai-toolkit assembles for a Hub base: see the Hub test
    shutil.copytree(one, mixed)
    shutil.rmtree(os.path.join(mixed, "text_encoder"))
    shutil.copytree(os.path.join(other, "text_encoder"), os.path.join(mixed, "text_encoder"))
    yield {"root": root, "one": one, "other": other, "mixed": mixed}
    CACHE.release()


def test_tokenizer_is_ai_toolkits_patched_t5(folders):
    folder = os.path.join(folders["one"], "tokenizer")
    ours, theirs, stock = aitk_tokenizer(folder), patched_t5(folder), AutoTokenizer.from_pretrained(folder)
    assert stock.backend_tokenizer.normalizer is not None, "the fixture must carry the SentencePiece normalizer"
    for text in TEXTS:
        kwargs = dict(padding="max_length", max_length=24, truncation=True, add_special_tokens=True,
                      return_attention_mask=True)
        got, want = ours(text, **kwargs), theirs(text, **kwargs)
        assert got.input_ids == want.input_ids and got.attention_mask == want.attention_mask, text
    assert ours("a fox\u2026").input_ids != stock("a fox\u2026").input_ids, "NFKC must matter for this prompt"


def test_tokenizer_from_a_sentencepiece_only_folder(folders, tmp_path):
    """A tokenizer folder with only spiece.model (no tokenizer.json) gives the same pieces, scores and ids."""
    import io

    import sentencepiece

    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(["a red fox runs in the snow", "the quick brown dog"] * 20), model_writer=model,
        vocab_size=24, model_type="unigram", character_coverage=1.0, pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
        minloglevel=2)
    (tmp_path / "spiece.model").write_bytes(model.getvalue())
    processor = sentencepiece.SentencePieceProcessor(model_file=str(tmp_path / "spiece.model"))
    ours = aitk_tokenizer(str(tmp_path))
    text = "a red fox runs"
    assert ours(text, add_special_tokens=False).input_ids == processor.encode(text)
    assert ours(text).input_ids[-1] == 1  # </s>


def test_render_uses_the_patched_tokenizer(folders):
    """The whole preview with a prompt NFKC changes: equal to the reference with ai-toolkit's tokenizer, and not to
    one with the stock (normalizing) tokenizer."""
    roots = ModelRoots(diffusers=(str(folders["root"] / "diffusers"),))
    handle = engine.load("wan21_1b", base="tiny-wan21_1b", dtype="fp32", device="cpu", roots=roots,
                         quantization="none")
    got = engine.generate(handle, PROMPT, negative_prompt="blurry\u2026", **SMALL)
    parts = ref.load_parts(folders["one"], torch.float32)
    values = (7, 2, 4.0, 64, 64, 5, torch.float32)
    parts["tokenizer"] = patched_t5(os.path.join(folders["one"], "tokenizer"))
    same(got, ref.preview(parts, PROMPT, "blurry\u2026", *values))
    parts["tokenizer"] = AutoTokenizer.from_pretrained(os.path.join(folders["one"], "tokenizer"))
    assert levels(got, ref.preview(parts, PROMPT, "blurry\u2026", *values)) > 0


def test_hub_base_reads_the_umt5_from_ai_toolkits_repo(folders, tmp_path, monkeypatch):
    """Base "default": transformer and VAE from the Wan repo, UMT5 encoder and tokenizer from
    ai-toolkit/umt5_xxl_encoder (here other weights than the Wan repo's own text_encoder/), as ai-toolkit loads it."""
    cache = str(tmp_path / "hub")
    fake_hub_repo(cache, "Wan-AI/Wan2.1-T2V-1.3B-Diffusers", {".": folders["one"]})
    fake_hub_repo(cache, UMT5_REPO, {"text_encoder": os.path.join(folders["other"], "text_encoder"),
                                     "tokenizer": os.path.join(folders["other"], "tokenizer")})
    monkeypatch.setenv("HF_HUB_CACHE", cache)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    CACHE.release()
    handle = engine.load("wan21_1b", base="default", dtype="fp32", device="cpu", roots=ModelRoots(),
                         quantization="none")
    got = engine.generate(handle, PROMPT, **SMALL)
    parts = ref.load_parts(folders["mixed"], torch.float32)
    parts["tokenizer"] = patched_t5(os.path.join(folders["mixed"], "tokenizer"))
    same(got, ref.preview(parts, PROMPT, "", 7, 2, 4.0, 64, 64, 5, torch.float32))
    own = ref.load_parts(folders["one"], torch.float32)
    own["tokenizer"] = parts["tokenizer"]
    own_umt5 = ref.preview(own, PROMPT, "", 7, 2, 4.0, 64, 64, 5, torch.float32)
    assert levels(got, own_umt5) > 0, "the Wan repo's own UMT5 differs"
    CACHE.release()


def test_hub_base_without_ai_toolkits_umt5_says_what_to_download(folders, tmp_path, monkeypatch):
    cache = str(tmp_path / "hub")
    fake_hub_repo(cache, "Wan-AI/Wan2.1-T2V-1.3B-Diffusers", {".": folders["one"]})
    monkeypatch.setenv("HF_HUB_CACHE", cache)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    CACHE.release()
    with pytest.raises(ModelSourceError, match=r"ai-toolkit/umt5_xxl_encoder .*hf download ai-toolkit/umt5_xxl"):
        engine.load("wan21_1b", base="default", dtype="fp32", device="cpu", roots=ModelRoots(), quantization="none")
    assert not CACHE.bases()
