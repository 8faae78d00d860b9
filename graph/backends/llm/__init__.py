"""LLM backends (token streams): OpenAI-compatible and llama.cpp servers, llama-cpp-python, echo."""
