"""Whisper itself: the CTranslate2 reader, loading and converting models, the tokenizer."""
