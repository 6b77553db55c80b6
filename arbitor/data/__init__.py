"""Data for arbitor, one module per modality: ``text`` (vocabularies, the embedded default corpus,
``TextDataset``), ``code``, ``image``, ``audio``, ``video``; ``patches`` (patch streams of the
non-text modalities) and ``modalities`` (what multimodal pretraining loads). No download anywhere:
every default is built from what the machine already has.
"""
from .errors import DataError
from .modalities import MODALITIES, PATCH_MODALITIES, TEXT_MODALITIES, load_modality
from .patches import PatchBatch, PatchDataset, frame_audio, patchify, unpatchify
from .text import (BUNDLED_TEXT_PATH, Batch, ByteVocab, CharVocab, TextDataset, Vocab, build_vocab, bundled_text,
                   default_corpus, load_text)

__all__ = ["DataError", "MODALITIES", "PATCH_MODALITIES", "TEXT_MODALITIES", "load_modality", "PatchBatch",
           "PatchDataset", "frame_audio", "patchify", "unpatchify", "BUNDLED_TEXT_PATH", "Batch", "ByteVocab",
           "CharVocab", "TextDataset", "Vocab", "build_vocab", "bundled_text", "default_corpus", "load_text"]
