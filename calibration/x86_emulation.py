"""What ONNX Runtime's fused INT8 kernels compute on x86 CPUs *without* VNNI, emulated in numpy/torch.

On x86, ONNX Runtime turns the Q/DQ pairs around a Conv/Gemm/MatMul into QLinearConv / QGemm and converts int8
activations to uint8 (zero point + 128) so its u8 x s8 kernels can run. Without VNNI (AVX2, or AVX-512 without
VNNI) those kernels multiply with ``vpmaddubsw``: each pair of adjacent u8 x s8 products is summed into a
*saturating* int16 before the int32 accumulation. With full-range int8 weights (|w| up to 127) a pair reaches
2 x 255 x 127 = 64,770 and is clipped to 32,767: the result differs from the Q/DQ model's own numerics. With
7-bit weights (|w| <= 64, ``reduce_range``) a pair stays <= 2 x 255 x 64 = 32,640 and is exact. With VNNI
(``vpdpbusd``) products are accumulated in int32 directly and nothing saturates, which is why the same file can
score differently on two CPUs.

``emulate(path, images)`` runs a Q/DQ ONNX through ONNX's reference evaluator with every quantized Conv / Gemm /
MatMul replaced by that integer arithmetic (pairs along the input channels of each kernel position for a Conv,
along K for a Gemm/MatMul, as MLAS packs them), so a VNNI machine can tell what an AVX2-only CPU would score. It
is an emulation of MLAS's documented kernel arithmetic, not MLAS itself: float rounding of the requantization may
differ in the last bit.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

DOMAIN = "gemdeploy.x86emu"
INT16_MIN, INT16_MAX = -32768, 32767
U8_MAX = 255


def pair_bound(max_abs_weight: int) -> int:
    """The largest |u8 x s8 pair sum| a weight range allows: <= 32,767 means vpmaddubsw never saturates."""
    return 2 * U8_MAX * int(max_abs_weight)


def _sat_pair_sums(a: np.ndarray, w: np.ndarray, rows_per_chunk: int = 8192) -> np.ndarray:
    """a [M, P, 2] (u8 values), w [N, P, 2] (s8 values) -> [M, N] = sum over P of sat16(a0*w0 + a1*w1).

    The exact product comes from one matrix multiply; only the weight pairs that can overflow at all
    (255 x (|w0| + |w1|) > 32,767) are then evaluated pair by pair and corrected, which keeps this fast."""
    import torch

    m, p, _ = a.shape
    n = w.shape[0]
    at = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
    wt = torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32))
    out = at.reshape(m, 2 * p).double() @ wt.reshape(n, 2 * p).double().T
    risky = (wt[:, :, 0].abs() + wt[:, :, 1].abs()) * U8_MAX > INT16_MAX
    n_idx, p_idx = torch.nonzero(risky, as_tuple=True)
    if len(n_idx) == 0:
        return out.numpy()
    w0, w1 = wt[n_idx, p_idx, 0], wt[n_idx, p_idx, 1]
    for s in range(0, m, rows_per_chunk):
        a0, a1 = at[s:s + rows_per_chunk, p_idx, 0], at[s:s + rows_per_chunk, p_idx, 1]  # [c, risky pairs]
        pairs = a0 * w0 + a1 * w1  # exact in float32 (|pair| < 2^17)
        correction = (pairs.clamp(INT16_MIN, INT16_MAX) - pairs).double()
        out[s:s + rows_per_chunk].index_add_(1, n_idx, correction)
    return out.numpy()


def _as_u8(xq: np.ndarray, zp: np.ndarray) -> tuple[np.ndarray, float]:
    """ONNX Runtime's x86 int8 -> uint8 activation conversion (value and zero point + 128)."""
    x = xq.astype(np.int32)
    z = int(np.asarray(zp).reshape(-1)[0]) if np.asarray(zp).size else 0
    if xq.dtype == np.int8:
        return x + 128, z + 128
    return x, z


def _saturates(wq: np.ndarray) -> bool:
    return wq.dtype == np.int8  # u8 weights use ONNX Runtime's u8 x u8 kernels (16-bit products: exact)


def _per_channel(v: np.ndarray, n: int) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64).reshape(-1)
    return np.broadcast_to(v, (n,)) if v.size == 1 else v


def _gemm(xq, xs, xz, wq, ws, wz, bias, trans_b: bool):
    x_u, zx = _as_u8(xq, xz)
    w = wq.astype(np.int32)
    w = w if trans_b else w.T  # [N, K]
    n, k = w.shape
    wz = _per_channel(wz if wz is not None else 0, n).astype(np.int64)
    w_centered = w - wz[:, None]
    if _saturates(wq):
        kp = k + (k % 2)
        a = np.zeros((x_u.shape[0], kp), np.int32)
        a[:, :k] = x_u
        wp = np.zeros((n, kp), np.int32)
        wp[:, :k] = w_centered
        acc = _sat_pair_sums(a.reshape(len(a), kp // 2, 2), wp.reshape(n, kp // 2, 2))
    else:
        acc = x_u.astype(np.float64) @ w_centered.T.astype(np.float64)
    acc = acc - zx * w_centered.sum(1)[None, :]  # the zero-point correction is exact int32 in MLAS
    y = acc * float(np.asarray(xs).reshape(-1)[0]) * _per_channel(ws, n)[None, :]
    if bias is not None:
        y = y + bias.reshape(1, -1)
    return y.astype(np.float32)


def _conv(xq, xs, xz, wq, ws, wz, bias, pads, strides, dilations, group):
    import torch

    if group != 1:
        raise ValueError("grouped convolutions are not emulated")
    x_u, zx = _as_u8(xq, xz)
    w = wq.astype(np.int32)
    n_out, c_in, kh, kw = w.shape
    wz = _per_channel(wz if wz is not None else 0, n_out).astype(np.int64)
    w_centered = w - wz[:, None, None, None]
    b = x_u.shape[0]
    xt = torch.from_numpy((x_u - zx).astype(np.float32))  # padding holds the zero point, as MLAS pads
    cols = torch.nn.functional.unfold(xt, (kh, kw), dilation=tuple(dilations), padding=(pads[0], pads[1]),
                                      stride=tuple(strides)) + zx  # [B, C*kh*kw, L]
    h_out = (x_u.shape[2] + pads[0] + pads[2] - dilations[0] * (kh - 1) - 1) // strides[0] + 1
    w_out = (x_u.shape[3] + pads[1] + pads[3] - dilations[1] * (kw - 1) - 1) // strides[1] + 1
    if pads[0] != pads[2] or pads[1] != pads[3]:
        raise ValueError("asymmetric padding is not emulated")
    length = cols.shape[-1]
    # MLAS packs channels-last: the K of one output is (kernel position, input channel), pairs along channels
    a = cols.reshape(b, c_in, kh * kw, length).permute(0, 3, 2, 1).reshape(b * length, kh * kw, c_in).numpy()
    wk = w_centered.reshape(n_out, c_in, kh * kw).transpose(0, 2, 1)  # [N, kpos, C]
    if _saturates(wq):
        cp = c_in + (c_in % 2)
        ap = np.zeros((a.shape[0], kh * kw, cp), np.float32)
        ap[:, :, :c_in] = a
        wp = np.zeros((n_out, kh * kw, cp), np.int32)
        wp[:, :, :c_in] = wk
        acc = _sat_pair_sums(ap.reshape(len(ap), kh * kw * cp // 2, 2), wp.reshape(n_out, kh * kw * cp // 2, 2))
    else:
        acc = a.reshape(len(a), -1).astype(np.float64) @ wk.reshape(n_out, -1).T.astype(np.float64)
    acc = acc - zx * w_centered.reshape(n_out, -1).sum(1)[None, :]
    y = acc * float(np.asarray(xs).reshape(-1)[0]) * _per_channel(ws, n_out)[None, :]
    if bias is not None:
        y = y + bias.reshape(1, -1)
    return y.reshape(b, h_out, w_out, n_out).transpose(0, 3, 1, 2).astype(np.float32)


def _op_classes():
    from onnx.reference.op_run import OpRun

    class EmuGemm(OpRun):
        op_domain = DOMAIN

        def _run(self, xq, xs, xz, wq, ws, wz, bias=None, trans_b=None, **_):
            return (_gemm(xq, xs, xz, wq, ws, wz, bias, bool(trans_b)),)

    class EmuConv(OpRun):
        op_domain = DOMAIN

        def _run(self, xq, xs, xz, wq, ws, wz, bias=None, pads=None, strides=None, dilations=None, group=None,
                 **_):
            k = 2
            return (_conv(xq, xs, xz, wq, ws, wz, bias, list(pads or [0] * 2 * k), list(strides or [1] * k),
                          list(dilations or [1] * k), int(group or 1)),)

    class EmuMaxPool(OpRun):  # the reference MaxPool loops in Python; torch's is the same arithmetic
        op_domain = DOMAIN

        def _run(self, x, kernel_shape=None, pads=None, strides=None, ceil_mode=None, **_):
            import torch

            p = list(pads or [0, 0, 0, 0])
            t = torch.nn.functional.pad(torch.from_numpy(x), (p[1], p[3], p[0], p[2]), value=-np.inf)
            out = torch.nn.functional.max_pool2d(t, tuple(kernel_shape), stride=tuple(strides or kernel_shape),
                                                 ceil_mode=bool(ceil_mode))
            return (out.numpy(),)

    class EmuQuantize(OpRun):  # ONNX's reference has these only from opset 19 on; same arithmetic
        op_domain = DOMAIN

        def _run(self, x, scale, zp=None, axis=None, **_):
            zp = np.zeros((), np.uint8) if zp is None else zp
            info = np.iinfo(zp.dtype)
            shape = _axis_shape(x, scale, axis)
            q = np.rint(x / scale.reshape(shape)) + zp.reshape(shape).astype(np.float64)
            return (np.clip(q, info.min, info.max).astype(zp.dtype),)

    class EmuDequantize(OpRun):
        op_domain = DOMAIN

        def _run(self, x, scale, zp=None, axis=None, **_):
            shape = _axis_shape(x, scale, axis)
            z = 0 if zp is None else zp.reshape(shape).astype(np.float64)
            return (((x.astype(np.float64) - z) * scale.reshape(shape)).astype(scale.dtype),)

    return [EmuGemm, EmuConv, EmuMaxPool, EmuQuantize, EmuDequantize]


def _axis_shape(x: np.ndarray, scale: np.ndarray, axis) -> tuple:
    if scale.size == 1:
        return ()
    shape = [1] * x.ndim
    shape[int(1 if axis is None else axis) % x.ndim] = scale.size
    return tuple(shape)


def _rewrite(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Replace DQ -> Conv/Gemm/MatMul <- DQ(weights) by the emulated integer ops (domain gemdeploy.x86emu)."""
    model = onnx.ModelProto.FromString(proto.SerializeToString())
    graph = model.graph
    inits = {i.name for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    nodes = []
    for n in graph.node:
        x_dq, w_dq = (producer.get(n.input[0]), producer.get(n.input[1])) if len(n.input) > 1 else (None, None)
        quantized = (n.op_type in ("Conv", "Gemm", "MatMul") and x_dq is not None and w_dq is not None
                     and x_dq.op_type == "DequantizeLinear" and w_dq.op_type == "DequantizeLinear"
                     and w_dq.input[0] in inits)
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        if n.op_type == "Conv" and quantized and int(attrs.get("group", 1)) == 1 and attrs.get("auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET"):
            ins = [x_dq.input[0], x_dq.input[1], x_dq.input[2], w_dq.input[0], w_dq.input[1], w_dq.input[2]]
            ins += [n.input[2]] if len(n.input) > 2 else []
            nodes.append(helper.make_node("EmuConv", ins, list(n.output), domain=DOMAIN,
                                          pads=list(attrs.get("pads", [0, 0, 0, 0])),
                                          strides=list(attrs.get("strides", [1, 1])),
                                          dilations=list(attrs.get("dilations", [1, 1])), group=1))
        elif n.op_type in ("Gemm", "MatMul") and quantized and not attrs.get("transA", 0) \
                and float(attrs.get("alpha", 1.0)) == 1.0 and float(attrs.get("beta", 1.0)) == 1.0:
            ins = [x_dq.input[0], x_dq.input[1], x_dq.input[2], w_dq.input[0], w_dq.input[1], w_dq.input[2]]
            ins += [n.input[2]] if n.op_type == "Gemm" and len(n.input) > 2 else []
            nodes.append(helper.make_node("EmuGemm", ins, list(n.output), domain=DOMAIN,
                                          trans_b=int(attrs.get("transB", 0)) if n.op_type == "Gemm" else 0))
        elif n.op_type == "MaxPool" and attrs.get("dilations") in (None, [1, 1]) and len(n.output) == 1 \
                and len(attrs.get("kernel_shape", [])) == 2 and attrs.get("auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET"):
            nodes.append(helper.make_node("EmuMaxPool", list(n.input), list(n.output), domain=DOMAIN,
                                          kernel_shape=list(attrs["kernel_shape"]), ceil_mode=int(attrs.get("ceil_mode", 0)),
                                          pads=list(attrs.get("pads", [0, 0, 0, 0])),
                                          strides=list(attrs.get("strides", attrs["kernel_shape"]))))
        elif n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            extra = {"axis": int(attrs["axis"])} if "axis" in attrs else {}
            nodes.append(helper.make_node("EmuQuantize" if n.op_type == "QuantizeLinear" else "EmuDequantize",
                                          list(n.input), list(n.output), domain=DOMAIN, **extra))
        else:
            nodes.append(n)
    del graph.node[:]
    graph.node.extend(nodes)
    model.opset_import.append(helper.make_opsetid(DOMAIN, 1))
    return model


def emulate(path: str | Path, images: np.ndarray, batch_size: int = 128) -> np.ndarray:
    """Logits of the Q/DQ ONNX at ``path`` as ONNX Runtime's x86 kernels without VNNI compute them."""
    from onnx.reference import ReferenceEvaluator

    proto = _rewrite(onnx.load(str(path)))
    session = ReferenceEvaluator(proto, new_ops=_op_classes())
    name = proto.graph.input[0].name
    images = np.ascontiguousarray(images, dtype=np.float32)
    outs = [session.run(None, {name: images[i:i + batch_size]})[0] for i in range(0, len(images), batch_size)]
    return np.concatenate(outs).astype(np.float32)


def max_abs_weight(proto: onnx.ModelProto) -> int | None:
    """The largest |int8 weight| feeding a quantized Conv/Gemm/MatMul (None when there is none)."""
    inits = {i.name: i for i in proto.graph.initializer}
    producer = {o: n for n in proto.graph.node for o in n.output}
    best = None
    for n in proto.graph.node:
        if n.op_type not in ("Conv", "Gemm", "MatMul") or len(n.input) < 2:
            continue
        dq = producer.get(n.input[1])
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in inits:
            continue
        w = numpy_helper.to_array(inits[dq.input[0]])
        if w.dtype == np.int8:
            best = max(best or 0, int(np.abs(w.astype(np.int32)).max()))
    return best
