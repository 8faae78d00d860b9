"""Vision backends (the Vision stage): openai-vision (chat completions with image parts)."""
