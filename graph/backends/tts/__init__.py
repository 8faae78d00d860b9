"""TTS backends (text -> mono float32 audio): espeak-ng, Soprano (in process, ZMQ worker, HTTP), the remote pipeline."""
