"""Write the real CLIP BPE tokenizer files (vocab.json, merges.txt) into pipelines/configs/clip_tokenizer/.

The data is OpenAI CLIP's `bpe_simple_vocab_16e6.txt.gz` (MIT), as shipped inside the `open-clip-torch` wheel on
PyPI; the output is identical in content to openai/clip-vit-large-patch14's vocab.json/merges.txt (what SD1.5 and
both SDXL tokenizers use). Run once: `python tools/make_clip_tokenizer.py open_clip_torch-*.whl`.
"""
import gzip
import json
import os
import sys
import zipfile


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def main(wheel):
    with zipfile.ZipFile(wheel) as z:
        name = next(n for n in z.namelist() if n.endswith("bpe_simple_vocab_16e6.txt.gz"))
        lines = gzip.decompress(z.read(name)).decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1:49152 - 256 - 2 + 1]]
    base = list(bytes_to_unicode().values())
    vocab = base + [v + "</w>" for v in base] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    out = os.path.join(os.path.dirname(__file__), "..", "pipelines", "configs", "clip_tokenizer")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump({v: i for i, v in enumerate(vocab)}, f, ensure_ascii=False)
    with open(os.path.join(out, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "".join(" ".join(m) + "\n" for m in merges))
    print(len(vocab), "tokens,", len(merges), "merges ->", os.path.abspath(out))


if __name__ == "__main__":
    main(sys.argv[1])
