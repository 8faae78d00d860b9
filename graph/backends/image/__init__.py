"""Image-generation backends (the ImageGen stage): openai-images, a1111, comfyui, diffusers (in process)."""
