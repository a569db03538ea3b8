"""Convolution and pooling over NCHW images: windows as strided views of the (padded) input and
matrix products over them (im2col by tensordot), so no Python loop runs over pixels — only the
gradient's fold, which adds each window position back, loops over the kernel's kh x kw offsets."""

from __future__ import annotations

import functools

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from . import kernel, routine


def _pair(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


def _windows(x, size, stride, padding, dilation, fill=0.0):
    """The (N, C, H', W', kh, kw) windows of ``x`` padded with ``fill``: a view, no copy."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = size, stride, padding, dilation
    if ph or pw:
        x = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=fill)
    spans = sliding_window_view(x, ((kh - 1) * dh + 1, (kw - 1) * dw + 1), axis=(2, 3))
    return spans[:, :, ::sh, ::sw, ::dh, ::dw]


@routine
def _fold(window_grads, shape, size, stride, padding, dilation):
    """The gradient of ``_windows``: each window element's gradient added back at its pixel.
    ``window_grads`` is (N, C, H', W', kh, kw), or the kh x kw (N, C, H', W') parts in order."""
    n, c, h, w = shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = size, stride, padding, dilation
    parts = window_grads if isinstance(window_grads, list) else [window_grads[..., i, j] for i in range(kh)
                                                                 for j in range(kw)]
    ho, wo = parts[0].shape[2:4]
    out = np.zeros((n, c, h + 2 * ph, w + 2 * pw), parts[0].dtype)
    for k, part in enumerate(parts):
        i, j = divmod(k, kw)
        out[:, :, i * dh:i * dh + sh * (ho - 1) + 1:sh, j * dw:j * dw + sw * (wo - 1) + 1:sw] += part
    return out[:, :, ph:ph + h, pw:pw + w].copy()


def _groups(weight, groups):
    """(input channel slice, output channel slice) of each group."""
    c, o = weight.shape[1], weight.shape[0] // groups
    return [(slice(k * c, (k + 1) * c), slice(k * o, (k + 1) * o)) for k in range(groups)]


def _conv2d(x, weight, *, stride, padding, dilation, groups):
    win = _windows(x, weight.shape[2:], _pair(stride), _pair(padding), _pair(dilation))
    parts = [np.tensordot(win[:, ci], weight[co], axes=([1, 4, 5], [1, 2, 3])) for ci, co in _groups(weight, groups)]
    out = parts[0] if groups == 1 else np.concatenate(parts, axis=-1)  # (N, H', W', O)
    return np.transpose(out, (0, 3, 1, 2))


def _conv2d_vjp(g, out, x, weight, *, stride, padding, dilation, groups):
    size, stride, padding, dilation = weight.shape[2:], _pair(stride), _pair(padding), _pair(dilation)
    win = _windows(x, size, stride, padding, dilation)
    parts = _groups(weight, groups)
    d_weight = [np.tensordot(g[:, co], win[:, ci], axes=([0, 2, 3], [0, 2, 3])) for ci, co in parts]
    d_windows = [np.transpose(np.tensordot(g[:, co], weight[co], axes=([1], [0])), (0, 3, 1, 2, 4, 5))
                 for ci, co in parts]
    if groups > 1:
        d_weight, d_windows = [np.concatenate(d_weight, axis=0)], [np.concatenate(d_windows, axis=1)]
    return _fold(d_windows[0], x.shape, size, stride, padding, dilation), d_weight[0]


def _pool_args(kernel_size, stride, padding):
    size = _pair(kernel_size)
    return size, _pair(stride if stride is not None else kernel_size), _pair(padding), (1, 1)


def _offsets(windows):
    """Each window position's values, (N, C, H', W') views: kh x kw of them."""
    return [windows[..., i, j] for i in range(windows.shape[4]) for j in range(windows.shape[5])]


def _max_pool(x, *, kernel_size, stride, padding):
    # the maximum of kh x kw strided views, one elementwise call each: numpy's reduction over the
    # windows' two small trailing axes is many times slower
    views = _offsets(_windows(x, *_pool_args(kernel_size, stride, padding), fill=-np.inf))
    return functools.reduce(np.maximum, views) if len(views) > 1 else views[0].copy()


def _max_pool_vjp(g, out, x, *, kernel_size, stride, padding):
    args = _pool_args(kernel_size, stride, padding)
    hits = [view == out for view in _offsets(_windows(x, *args, fill=-np.inf))]
    count = sum(hits[1:], hits[0].astype(x.dtype))
    share = g / count  # the elements that attain a window's maximum share its gradient
    return (_fold([hit * share for hit in hits], x.shape, *args),)


def _avg_pool(x, *, kernel_size, stride, padding):
    views = _offsets(_windows(x, *_pool_args(kernel_size, stride, padding)))
    return sum(views[1:], views[0]) / len(views)  # the sum of kh x kw views, as _max_pool


def _avg_pool_vjp(g, out, x, *, kernel_size, stride, padding):
    args = _pool_args(kernel_size, stride, padding)
    (kh, kw) = args[0]
    share = g / (kh * kw)
    return (_fold([share] * (kh * kw), x.shape, *args),)


kernel("conv2d", _conv2d, _conv2d_vjp, saves=(0, 1))
kernel("max_pool2d", _max_pool, _max_pool_vjp, saves=("out", 0))
kernel("avg_pool2d", _avg_pool, _avg_pool_vjp)
