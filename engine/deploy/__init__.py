"""Leaving the app: exports to whisper.cpp and CTranslate2, the real runtimes and their latency."""
