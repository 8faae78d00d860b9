"""Speech-to-text backends (pocketsphinx, faster-whisper, whisper-cpp, openai-transcriptions)."""
