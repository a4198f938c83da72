"""ONNX and TensorRT exporters (installed as gemdeploy.exporters)."""
