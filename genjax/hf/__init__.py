"""Hugging Face interop for BERT and GPT-2: model directories (config.json, weights, tokenizer.json) in and out.

config.py: config.json <-> genjax modules. layout.py: tensor names and layouts. files.py: reading and writing
the files. hub.py: `hf:NAME` downloads. tokenizer.py: WordPiece and byte-level BPE tokenizers.
directory.py: `load_pretrained` and `export_pretrained`, built from the others.
"""
