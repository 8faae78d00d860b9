"""Voice-conversion backends (audio -> Miku's voice): WORLD, RVC's ONNX export, passthrough."""
