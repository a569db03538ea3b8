"""Convolution and pooling over NCHW images: windows as strided views of the (padded) input and
matrix products over them, so no Python loop runs over pixels — only the gradient's fold, which
adds each window position back, loops over the kernel's kh x kw offsets.

conv2d works channels-first, batch-last: the input is copied once, padded, as (C, H, W, N), and its
im2col matrix (C kh kw, H' W' N) is one copy of a window view whose innermost runs are whole
output rows of the batch (W' x N contiguous values, where an NCHW layout gives runs of kw), so
the convolution and both its gradients are each one matrix product written straight into its
buffer, and the fold is kh x kw adds of such runs."""

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


@routine
def _padded_cl(x, padding):
    """NCHW ``x`` as (C, H + 2 ph, W + 2 pw, N), zeros around: channels first, batch last."""
    (n, c, h, w), (ph, pw) = x.shape, padding
    out = np.zeros((c, h + 2 * ph, w + 2 * pw, n), x.dtype)
    out[:, ph:ph + h, pw:pw + w] = x.transpose(1, 2, 3, 0)
    return out


def _columns(x, size, stride, padding, dilation):
    """The im2col matrix of NCHW ``x``, laid out (C, kh, kw, H', W', N): one copy of a window view."""
    (kh, kw), (sh, sw), (dh, dw) = size, stride, dilation
    padded = _padded_cl(x, padding) if any(padding) else x.transpose(1, 2, 3, 0)
    spans = sliding_window_view(padded, ((kh - 1) * dh + 1, (kw - 1) * dw + 1), axis=(1, 2))
    return spans[:, ::sh, ::sw, :, ::dh, ::dw].transpose(0, 4, 5, 1, 2, 3).copy()


def _covered(k, dilation, stride, padding, out_len, in_len):
    """For kernel offset ``k`` along one axis: the first output position whose window element
    lies inside the image (not in the padding), how many do, and that element's pixel."""
    first = max(0, -(-(padding - k * dilation) // stride))
    last = min(out_len - 1, (in_len - 1 + padding - k * dilation) // stride)
    return first, max(0, last - first + 1), first * stride + k * dilation - padding


@routine
def _fold_cl(d_columns, shape, size, stride, padding, dilation):
    """The gradient of ``_columns``: (C, kh, kw, H', W', N) added back at each window's pixels,
    as NCHW ``shape``. Only the parts that land inside the image are added (the padding's
    would be thrown away)."""
    n, c, h, w = shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = size, stride, padding, dilation
    ho, wo = d_columns.shape[3:5]
    out = np.zeros((c, h, w, n), d_columns.dtype)
    for i in range(kh):
        r0, rows, y0 = _covered(i, dh, sh, ph, ho, h)
        for j in range(kw):
            c0, cols, x0 = _covered(j, dw, sw, pw, wo, w)
            if rows and cols:
                out[:, y0:y0 + sh * (rows - 1) + 1:sh, x0:x0 + sw * (cols - 1) + 1:sw] += \
                    d_columns[:, i, j, r0:r0 + rows, c0:c0 + cols]
    return out.transpose(3, 0, 1, 2)


def _conv_args(weight, stride, padding, dilation):
    return weight.shape[2:], _pair(stride), _pair(padding), _pair(dilation)


def _conv2d(x, weight, *, stride, padding, dilation, groups):
    cols = _columns(x, *_conv_args(weight, stride, padding, dilation))
    c, kh, kw, ho, wo, n = cols.shape
    o, k = weight.shape[0], c * kh * kw // groups
    out = np.matmul(weight.reshape(groups, o // groups, k), cols.reshape(groups, k, ho * wo * n))
    return out.reshape(o, ho, wo, n).transpose(3, 0, 1, 2), (cols,)  # the VJP reuses the im2col matrix


def _conv2d_vjp(g, out, x, weight, *, residuals, stride, padding, dilation, groups):
    (cols,) = residuals
    c, kh, kw, ho, wo, n = cols.shape
    o, k, m = weight.shape[0], c * kh * kw // groups, ho * wo * n
    g_cl = g.transpose(1, 2, 3, 0).copy().reshape(groups, o // groups, m)
    d_weight = np.matmul(g_cl, cols.reshape(groups, k, m).transpose(0, 2, 1))
    d_columns = np.matmul(weight.reshape(groups, o // groups, k).transpose(0, 2, 1), g_cl)
    d_x = _fold_cl(d_columns.reshape(cols.shape), x.shape, *_conv_args(weight, stride, padding, dilation))
    return d_x, d_weight.reshape(weight.shape)


def _pool_args(kernel_size, stride, padding):
    size = _pair(kernel_size)
    return size, _pair(stride if stride is not None else kernel_size), _pair(padding), (1, 1)


def _offsets(windows):
    """Each window position's values, (N, C, H', W') views: kh x kw of them."""
    return [windows[..., i, j] for i in range(windows.shape[4]) for j in range(windows.shape[5])]


def _tiles(size, stride, padding, dilation):
    """Whether the windows tile the image (stride = size, no padding): then every pixel is in at
    most one window, and the gradient is placed, not added (:func:`_interleave`)."""
    return stride == size and padding == (0, 0)


def _blocks(x, size):
    """Tiling windows' values as (kh, kw, N, C, H', W'), each offset's values one contiguous block:
    one strided copy, after which every elementwise call runs over contiguous memory."""
    (n, c, h, w), (kh, kw) = x.shape, size
    ho, wo = h // kh, w // kw
    return x[:, :, :ho * kh, :wo * kw].reshape(n, c, ho, kh, wo, kw).transpose(3, 5, 0, 1, 2, 4).copy()


@routine
def _interleave(parts, shape, size):
    """The gradient of tiling windows: the kh x kw (N, C, H', W') parts, each written at its offset
    in every window (the rows and columns no window covers get 0)."""
    (n, c, h, w), (kh, kw) = shape, size
    ho, wo = parts[0].shape[2:]
    out = np.empty(shape, parts[0].dtype) if (h, w) == (ho * kh, wo * kw) else np.zeros(shape, parts[0].dtype)
    tiled = out[:, :, :ho * kh, :wo * kw].reshape(n, c, ho, kh, wo, kw)
    for k, part in enumerate(parts):
        tiled[:, :, :, k // kw, :, k % kw] = part
    return out


def _max_pool(x, *, kernel_size, stride, padding):
    args = _pool_args(kernel_size, stride, padding)
    if _tiles(*args):  # the blocks are kept for the VJP: its comparisons are contiguous too
        kept = (_blocks(x, args[0]),)
        views = [kept[0][i, j] for i in range(kept[0].shape[0]) for j in range(kept[0].shape[1])]
    else:
        kept, views = (), _offsets(_windows(x, *args, fill=-np.inf))
    # the maximum of kh x kw views, one elementwise call each: numpy's reduction over the
    # windows' two small trailing axes is many times slower
    out = functools.reduce(np.maximum, views) if len(views) > 1 else views[0].copy()
    return out, kept


def _max_pool_vjp(g, out, x, *, residuals, kernel_size, stride, padding):
    args = _pool_args(kernel_size, stride, padding)
    if residuals:  # tiling windows: the forward's blocks
        (blocks,) = residuals
        views = [blocks[i, j] for i in range(blocks.shape[0]) for j in range(blocks.shape[1])]
    else:
        views = _offsets(_windows(x, *args, fill=-np.inf))
    hits = [view == out for view in views]
    count = sum(hits[1:], hits[0].astype(x.dtype))
    share = g / count  # the elements that attain a window's maximum share its gradient
    parts = [hit * share for hit in hits]
    return (_interleave(parts, x.shape, args[0]) if residuals else _fold(parts, x.shape, *args),)


def _avg_pool(x, *, kernel_size, stride, padding):
    views = _offsets(_windows(x, *_pool_args(kernel_size, stride, padding)))
    return sum(views[1:], views[0]) / len(views)  # the sum of kh x kw views, as _max_pool


def _avg_pool_vjp(g, out, x, *, kernel_size, stride, padding):
    args = _pool_args(kernel_size, stride, padding)
    (kh, kw) = args[0]
    share = g / (kh * kw)
    parts = [share] * (kh * kw)
    return (_interleave(parts, x.shape, args[0]) if _tiles(*args) else _fold(parts, x.shape, *args),)


kernel("conv2d", _conv2d, _conv2d_vjp, saves=(1,), residuals=True)
kernel("max_pool2d", _max_pool, _max_pool_vjp, saves=("out", 0), residuals=True)
kernel("avg_pool2d", _avg_pool, _avg_pool_vjp)
