"""INT8 calibration into explicit Q/DQ ONNX (installed as gemdeploy.calibration)."""
