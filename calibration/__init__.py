"""INT8 calibration into explicit Q/DQ ONNX (installed as gemdeploy.calibration). It sits below the exporters
(which call it) and imports none of them."""

CALIB_METHODS = ("entropy", "percentile", "minmax")  # ONNX Runtime's calibration methods, `export --calib-method`
